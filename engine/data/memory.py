"""How much memory decoding an image folder takes, checked before a job is queued and before it decodes.

An image folder is decoded whole into memory (see ``bundle``): N images x channels x side² bytes, and
about twice that at the peak (the decoded images and the stacked tensor made of them, then the
train/validation copies). A folder that will not fit is refused with the figures and what to change,
instead of growing until the kernel's OOM killer ends the job.
"""
from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from pathlib import Path

import psutil

from .errors import DataError
from .images import NATIVE_SIDE_LIMIT
from .listing import list_imagefolder, open_reader

PEAK_FACTOR = 2        # decoded images + the tensor stacked from them (or the split copies), at once
USABLE_SHARE = 0.75    # of the memory available now: the rest is for the model, its training and the OS
HEADER_SAMPLES = 12    # images whose headers give a folder's native size (decoding waits for the job)


@dataclass(frozen=True)
class Estimate:
    images: int
    side: int          # pixels a side after decoding
    peak_bytes: int
    available_bytes: int

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= USABLE_SHARE * self.available_bytes

    def text(self) -> str:
        return (f"decoding {self.images:,} images at {self.side}x{self.side} px needs about "
                f"{gib(self.peak_bytes)} of memory ({gib(self.available_bytes)} available now)")

    def problem(self) -> str:
        smaller = max(4, int(self.side * (USABLE_SHARE * self.available_bytes / self.peak_bytes) ** 0.5) // 8 * 8)
        return (f"{self.text()}, more than this machine can spare. Set data.image_size lower (e.g. {smaller}) or "
                "use a folder with fewer images (data.limit does not help: every image is decoded before the "
                "split)")


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def estimate(path: str | Path, image_size: int | None) -> Estimate:
    """The decoding footprint of the image folder at ``path`` at ``image_size`` (None: native, capped
    at NATIVE_SIDE_LIMIT), against the memory available now. Raises DataError if it cannot be listed."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError as e:
        raise DataError(f"cannot read {p}: {e.strerror or e}") from None
    images, side = _images_and_side(str(p.resolve()), st.st_size, st.st_mtime_ns, image_size)
    return Estimate(images, side, PEAK_FACTOR * images * 3 * side * side, psutil.virtual_memory().available)


def check(path: str | Path, image_size: int | None) -> Estimate:
    """``estimate``, raising DataError (naming what to change) when it does not fit."""
    e = estimate(path, image_size)
    if not e.fits:
        raise DataError(e.problem())
    return e


@functools.lru_cache(maxsize=32)
def _images_and_side(path: str, size: int, mtime_ns: int, image_size: int | None) -> tuple[int, int]:
    # Keyed on the path's size and time: a zip changes as a whole; a folder's count is re-read when its
    # own entry changes (files added or removed at its top), which is what matters for an estimate.
    files, layout = list_imagefolder(Path(path))
    members = [m for items in layout["splits"].values() for m, _ in items]
    if image_size:
        return len(members), image_size
    return len(members), _native_side(Path(path), members)


def _native_side(path: Path, members: list[str]) -> int:
    """The side a sample of the images decodes to natively (their shorter side, capped): the largest
    seen, so that the estimate errs high. Only headers are parsed."""
    from PIL import Image
    step = max(1, len(members) // HEADER_SAMPLES)
    reader = open_reader(path)
    side = 0
    try:
        for member in members[::step][:HEADER_SAMPLES]:
            try:
                with Image.open(io.BytesIO(reader.read(member))) as im:
                    side = max(side, min(min(im.size), NATIVE_SIDE_LIMIT))
            except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
                continue  # an unreadable image is skipped by decoding too: it costs no memory
    finally:
        reader.close()
    return side or NATIVE_SIDE_LIMIT
