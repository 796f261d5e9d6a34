"""ImageFolder listings (a directory or a zip): which files are images of which class in which split.

Read from names alone, so a wrong upload is refused in milliseconds, before anything is decoded.
Archives are checked first: no absolute or '..' paths, no links, no zip bombs.
"""
from __future__ import annotations

import stat
import struct
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

from .errors import DataError
from .images import IMAGE_SUFFIXES
from .walk import list_dir
from .zipnames import member_name

MAX_ARCHIVE_BYTES = 32 << 30    # zip bomb guard: total uncompressed size
MAX_MEMBER_RATIO = 200          # zip bomb guard: per-member compression ratio
MAX_MEMBER_BYTES = 256 << 20    # zip bomb guard: what one member may inflate to, whatever it declares
INFLATE_CHUNK = 1 << 20         # bytes inflated per step while reading a member (bounds memory per step)


def list_imagefolder(path: Path) -> tuple[list[str], dict]:
    """The members of an ImageFolder zip or directory and their layout; DataError if unusable."""
    try:
        if not path.exists():
            raise DataError(f"not found: {path}")
        if not (path.is_file() or path.is_dir()):
            raise DataError(f"{path} is neither a folder nor a zip file")
        files = _zip_listing(path) if path.is_file() else list_dir(path)
    except OSError as e:  # a path typed on the page may be anything: /proc, a device, a folder we may not read
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    return files, _layout(files, path)


def describe_imagefolder(path: str | Path) -> dict[str, Any]:
    """Classes and image counts per split of an ImageFolder directory or zip, from its listing alone
    (no image decoded: milliseconds), so a wrong upload is refused before any job is queued.
    Raises DataError with what is wrong."""
    _, layout = list_imagefolder(Path(path).expanduser())
    return {"classes": layout["classes"], "images": {k: len(v) for k, v in layout["splits"].items()},
            "ignored": layout["ignored"], "note": ignored_note(layout["ignored"]) if layout["ignored"] else None}


def _zip_listing(path: Path) -> list[str]:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise DataError(f"{path} is not a readable zip archive") from None
    with zf:
        total = 0
        names = []
        for info in zf.infolist():
            name = member_name(info)  # '/'-separated, UTF-8 where the bytes are (Windows tools, Linux zip)
            if name.startswith(("/", "\\")) or ".." in Path(name).parts or ":" in name.split("/")[0]:
                raise DataError(f"unsafe path in archive {path.name}: {name!r} (absolute or '..')")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise DataError(f"archive {path.name} contains a symbolic link: {name!r}")
            total += info.file_size
            if info.compress_size and info.file_size / info.compress_size > MAX_MEMBER_RATIO and info.file_size > 1 << 20:
                raise DataError(f"archive member {name!r} expands {info.file_size / info.compress_size:.0f}x "
                                "(zip bomb guard)")
            names.append(name)  # folders too (trailing '/'), so an empty class folder is seen
        twice = [n for n, k in Counter(names).items() if k > 1]
        if twice:
            raise DataError(f"archive {path.name} holds {len(twice)} name(s) twice once '\\' is read as '/', "
                            f"e.g. {twice[0]!r}")
        if total > MAX_ARCHIVE_BYTES:
            raise DataError(f"archive {path.name} expands to {total / 2**30:.1f} GiB "
                            f"(limit {MAX_ARCHIVE_BYTES / 2**30:.0f} GiB)")
    return names


def _layout(files: list[str], path: Path) -> dict:
    """Find train/ and test/ (or a single folder of class folders) in a listing of relative paths."""
    visible = [f for f in files if not f.endswith("/") and not any(p.startswith(".") for p in f.split("/"))
               and "__MACOSX" not in f]  # hidden files and macOS zip litter are never data
    images = [f for f in visible if f.lower().endswith(IMAGE_SUFFIXES)]
    folders = [f.rstrip("/").split("/") for f in files if f.endswith("/")]
    if not images:
        raise DataError(f"no images found in {path}")
    parts = [f.split("/") for f in images]
    # Locate the folder that holds train/ (possibly under a single top folder).
    for depth in range(0, 3):
        tr = [p for p in parts if len(p) == depth + 3 and p[depth] == "train"]
        if tr:
            prefix = tr[0][:depth]
            sets = {}
            for split_name in ("train", "test"):
                sel = [p for p in parts if len(p) == depth + 3 and p[:depth] == prefix and p[depth] == split_name]
                sets[split_name] = sel
            classes = sorted({p[depth + 1] for p in sets["train"]})
            empty = sorted({f[depth + 1] for f in folders if len(f) == depth + 2 and f[:depth] == prefix
                            and f[depth] == "train"} - set(classes))
            if empty:
                raise DataError(f"class folder(s) with no images in train/: {', '.join(empty[:5])}; "
                                "remove them or add images")
            if not sets["test"]:
                raise DataError(f"{path} has train/ but no test/ folder of class folders")
            extra = sorted({p[depth + 1] for p in sets["test"]} - set(classes))
            if extra:
                raise DataError(f"test/ has classes missing from train/: {', '.join(extra[:5])}")
            splits = {s: [("/".join(p), classes.index(p[depth + 1])) for p in sel] for s, sel in sets.items()}
            return {"classes": classes, "splits": splits, "ignored": _ignored(visible, splits)}
    # Single folder of class folders: <class>/<image> (maybe under one top folder).
    for depth in range(0, 2):
        sel = [p for p in parts if len(p) == depth + 2]
        if sel:
            classes = sorted({p[depth] for p in sel})
            if len(classes) < 2:
                continue
            splits = {"all": [("/".join(p), classes.index(p[depth])) for p in sel]}
            return {"classes": classes, "splits": splits, "ignored": _ignored(visible, splits)}
    raise DataError(f"{path} is not in ImageFolder layout: expected train/<class>/<image> and "
                    "test/<class>/<image>, or <class>/<image> with at least two class folders")


def _ignored(visible: list[str], splits: dict[str, list]) -> list[str]:
    """Files the layout leaves out (not images, or not directly in a class folder): said, not dropped silently."""
    used = {m for items in splits.values() for m, _ in items}
    return sorted(f for f in visible if f not in used)


def ignored_note(ignored: list[str]) -> str:
    return (f"ignored {len(ignored)} file(s) that are not images directly inside a class folder: "
            + ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else ""))


class ZipReader:
    """Reads members by inflating them itself, counting the bytes that actually come out.

    zipfile trusts the sizes a header declares: a member that declares 4 KB but inflates to 1 GiB
    made it allocate the whole GiB in one step (then cut it to 4 KB). Here the output is counted in
    steps of ``INFLATE_CHUNK`` and refused once it passes what it declares (or what its compressed size
    allows); the result must match the declared size and CRC.
    """

    def __init__(self, path: Path):
        self.path = path
        self.zf = zipfile.ZipFile(path)
        self.members = {member_name(info): info for info in self.zf.infolist()}  # listing name -> stored entry
        self.fp = open(path, "rb")

    def read(self, member: str) -> bytes:
        info = self.members[member]
        where = f"archive member {member!r} of {self.path.name}"
        if info.flag_bits & 0x1:
            raise DataError(f"{where} is encrypted; zip the images without a password")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise DataError(f"{where} uses compression method {info.compress_type}; only stored or deflated "
                            "members are read (re-create the zip with a standard zip tool)")
        # Never more than it declares (the CRC covers only that), nor than its compressed size allows.
        limit = min(info.file_size, member_limit(info.compress_size))
        self.fp.seek(info.header_offset)
        header = self.fp.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise DataError(f"{where} is damaged (no local header); re-create the zip")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        self.fp.seek(info.header_offset + 30 + name_len + extra_len)
        data = (self._stored(info, limit, where) if info.compress_type == zipfile.ZIP_STORED
                else self._inflate(info, limit, where))
        if len(data) != info.file_size or zlib.crc32(data) != info.CRC:
            raise DataError(f"{where} is damaged (its size or CRC differs from its header); re-create the zip")
        return data

    def _stored(self, info: zipfile.ZipInfo, limit: int, where: str) -> bytes:
        if info.compress_size > limit:
            raise DataError(f"{where} inflates past {_size(limit)} (zip bomb guard)")
        return self.fp.read(info.compress_size)

    def _inflate(self, info: zipfile.ZipInfo, limit: int, where: str) -> bytes:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        out, produced, left = [], 0, info.compress_size
        pending = b""
        while not inflater.eof:
            if not pending:
                pending = self.fp.read(min(INFLATE_CHUNK, left))
                left -= len(pending)
                if not pending:
                    raise DataError(f"{where} is damaged (its compressed data ends early); re-create the zip")
            try:  # at most limit + 1 bytes per step: one past the limit is enough to refuse
                chunk = inflater.decompress(pending, min(INFLATE_CHUNK, limit + 1 - produced))
            except zlib.error as e:
                raise DataError(f"{where} is damaged ({e}); re-create the zip") from None
            pending = inflater.unconsumed_tail
            produced += len(chunk)
            if produced > limit:
                raise DataError(f"{where} inflates past {_size(limit)}, more than its header declares or its "
                                f"compressed size allows (zip bomb guard)")
            out.append(chunk)
        return b"".join(out)

    def close(self) -> None:
        self.fp.close()
        self.zf.close()


def member_limit(compressed_bytes: int) -> int:
    """The most one member may inflate to: ``MAX_MEMBER_RATIO`` times its compressed size (at least
    1 MiB, so tiny well-compressed files pass), never more than ``MAX_MEMBER_BYTES``."""
    return min(MAX_MEMBER_BYTES, max(1 << 20, MAX_MEMBER_RATIO * compressed_bytes))


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 1 << 20 else f"{n} bytes"


class DirReader:
    def __init__(self, path: Path):
        self.root = path

    def read(self, member: str) -> bytes:
        return (self.root / member).read_bytes()

    def close(self) -> None:
        pass


def open_reader(path: Path) -> ZipReader | DirReader:
    """Reads members of a listing by name: from the zip ``path`` is, or from below the folder it is."""
    return ZipReader(path) if path.is_file() else DirReader(path)
