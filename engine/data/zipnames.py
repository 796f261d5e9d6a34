"""Member names of a zip as their author meant them, whichever tool wrote it.

Zip stores names as bytes: UTF-8 when the archive's flag says so, else (by the format's letter) CP437,
which Python's zipfile then applies. Linux ``zip -r`` and many other tools write UTF-8 bytes without the
flag, so ``café`` would read as ``caf├⌐``; Info-ZIP may add the UTF-8 name in an extra field instead.
Windows tools may separate folders with ``\\``. Every name is brought to the UTF-8, ``/``-separated form
before the archive's safety checks, which then see what a reader would see.
"""
from __future__ import annotations

import struct
import zipfile
import zlib

UTF8_FLAG = 0x800               # general purpose bit 11: the name is UTF-8
UNICODE_PATH_FIELD = 0x7075     # Info-ZIP Unicode Path extra field: version, CRC-32 of the name, UTF-8 name


def member_name(info: zipfile.ZipInfo) -> str:
    """``info``'s name decoded as its author meant it, with ``/`` between folders."""
    name = info.filename
    if not info.flag_bits & UTF8_FLAG:
        stored = name.encode("cp437")  # zipfile decoded the stored bytes as CP437: take them back
        name = _unicode_path(info.extra, stored) or _as_utf8(stored) or name
    return name.replace("\\", "/")


def _as_utf8(stored: bytes) -> str | None:
    """The name if its bytes are valid UTF-8 (plain ASCII included): CP437 text with accents or
    box-drawing characters essentially never is."""
    try:
        return stored.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _unicode_path(extra: bytes, stored: bytes) -> str | None:
    """The UTF-8 name of an Info-ZIP Unicode Path field, if there is one and it belongs to this name."""
    pos = 0
    while pos + 4 <= len(extra):
        kind, size = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4:pos + 4 + size]
        pos += 4 + size
        if kind == UNICODE_PATH_FIELD and len(body) >= 5 and body[0] == 1:
            if struct.unpack_from("<I", body, 1)[0] != zlib.crc32(stored):
                return None  # the name was changed after the field was written: the field is stale
            try:
                return body[5:].decode("utf-8")
            except UnicodeDecodeError:
                return None
    return None
