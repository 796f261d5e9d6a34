"""A dataset folder on this server listed within bounds of time, size and depth.

The path is typed by a person: ``/``, ``/proc`` or a home folder full of caches must answer within
seconds with what was found, never walk the whole machine, block the page for a minute or crash.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from .errors import DataError

# The layout looks at most five levels down (top/sub/train/<class>/<image>); one more level lets files
# nested below a class folder be named as left out. Deeper files could never be data.
MAX_DEPTH = 6
MAX_SECONDS = 10.0              # a folder of ImageNet's size (1.3 M images) lists in a few seconds
MAX_ENTRIES = 3_000_000
SKIPPED_FOLDERS = ("__MACOSX",)  # zip litter; hidden folders (.git, .cache, ...) are skipped too


def list_dir(root: Path, max_seconds: float | None = None, max_entries: int | None = None) -> list[str]:
    """Relative paths of the files (and, ending in '/', folders) below ``root``, sorted. Links are not
    followed, hidden folders not entered, folders below that cannot be read skipped (listed, but empty).
    Raises DataError when ``root`` cannot be read, or at the time or entry bound (default MAX_SECONDS,
    MAX_ENTRIES), saying how much was found by then."""
    max_seconds = MAX_SECONDS if max_seconds is None else max_seconds
    max_entries = MAX_ENTRIES if max_entries is None else max_entries
    t0 = time.monotonic()
    out: list[str] = []
    folders = unreadable = 0
    pending = [(root, "", 1)]
    while pending:
        folder, rel, depth = pending.pop()
        folders += 1
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as e:
            if folder == root:
                raise DataError(f"cannot read {root}: {e.strerror or e}") from None
            # Gone while we looked (a process under /proc) or not ours to read (lost+found): its entry is
            # listed, its content is not, so a class folder we may not read shows up as an empty one.
            unreadable += 1
            continue
        for entry in entries:
            name = rel + entry.name
            try:
                if entry.is_symlink():
                    continue  # never follow links out of the dataset folder
                if entry.is_dir(follow_symlinks=False):
                    out.append(name + "/")
                    if depth < MAX_DEPTH and not entry.name.startswith(".") and entry.name not in SKIPPED_FOLDERS:
                        pending.append((Path(entry.path), name + "/", depth + 1))
                elif entry.is_file(follow_symlinks=False):
                    out.append(name)
            except OSError:
                continue  # an entry that vanished or cannot even be examined is no image
        if time.monotonic() - t0 > max_seconds or len(out) > max_entries:
            skipped = f" ({unreadable:,} of them could not be read)" if unreadable else ""
            raise DataError(f"{root} is too large to be one dataset: stopped {_found(out, folders, t0)}{skipped} "
                            "without reaching the end. Choose the folder that holds train/ and test/ (or the class "
                            "folders)")
    return sorted(out, key=lambda p: p.rstrip("/").split("/"))  # folder by folder, as Path sorts


def _found(out: list[str], folders: int, t0: float) -> str:
    files = sum(not p.endswith("/") for p in out)
    return f"after {folders:,} folders and {files:,} files in {time.monotonic() - t0:.1f} s"
