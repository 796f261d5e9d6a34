"""The dataset registry and its sources: each returns (train Split, test Split, class names, notes).

An image folder is decoded once and cached on disk as tensors, keyed by its files' sizes and times.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import settings
from ..spec import DataSpec
from ..store import workspace_root
from .bundle import Split
from .errors import DataError, ImageError
from .images import decode_image, resize_uint8
from . import memory
from .listing import ignored_note, list_imagefolder, open_reader

log = logging.getLogger("slimbench.data")

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MAX_BAD_SHARE = 0.05            # a dataset with more unreadable images than this is refused

Source = Callable[[DataSpec], tuple[Split, Split, list[str], list[str]]]
DATASETS: dict[str, Source] = {}
COLOUR_FLIP = {"cifar10": True, "imagefolder": True, "digits": False, "fashion-mnist": True}


def register_dataset(name: str):
    def deco(fn: Source) -> Source:
        DATASETS[name] = fn
        return fn
    return deco


@register_dataset("digits")
def _digits(spec: DataSpec):
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.from_numpy((d.images * (255.0 / 16.0)).round().astype(np.uint8))[:, None]
    y = torch.from_numpy(d.target.astype(np.int64))
    # scikit-learn ships one set: hold out a fixed, seeded 20 % as the test split.
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))
    n_test = len(y) // 5
    test, train = perm[:n_test], perm[n_test:]
    return Split(x[train], y[train]), Split(x[test], y[test]), [str(i) for i in range(10)], []


@register_dataset("fashion-mnist")
def _fashion(spec: DataSpec):
    root = Path(spec.path or settings.fashion_mnist()).expanduser()
    candidates = [root, root / "FashionMNIST" / "raw", root / "raw"]
    for d in candidates:
        if _find_idx(d, "train-images-idx3-ubyte"):
            break
    else:
        raise DataError(f"Fashion-MNIST not found under {root}: expected train-images-idx3-ubyte(.gz) and "
                        "friends there or in FashionMNIST/raw/. On Debian: apt-get install dataset-fashion-mnist")
    def split(prefix: str) -> Split:
        x = _read_idx(_find_idx(d, f"{prefix}-images-idx3-ubyte"))
        y = _read_idx(_find_idx(d, f"{prefix}-labels-idx1-ubyte"))
        return Split(torch.from_numpy(x.copy())[:, None], torch.from_numpy(y.astype(np.int64)))
    return split("train"), split("t10k"), list(FASHION_CLASSES), []


def _find_idx(d: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (d / name).is_file():
            return d / name
    return None


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    expected = int(np.prod(dims))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != expected:
        raise DataError(f"{path} is truncated: {data.size} of {expected} bytes")
    return data.reshape(dims)


@register_dataset("cifar10")
def _cifar10(spec: DataSpec):
    path = spec.path or settings.cifar10()
    if not path:
        raise DataError("cifar10 needs data.path (or $SLIMBENCH_CIFAR10): a zip or directory in ImageFolder "
                        "layout with train/<class>/*.png|jpg and test/<class>/... (nothing is downloaded)")
    return imagefolder_source(spec, Path(path).expanduser())


@register_dataset("imagefolder")
def _imagefolder(spec: DataSpec):
    if not spec.path:
        raise DataError("imagefolder needs data.path: a directory or .zip in ImageFolder layout "
                        "(train/<class>/..., test/<class>/... or just <class>/...)")
    return imagefolder_source(spec, Path(spec.path).expanduser())


def imagefolder_path(spec: DataSpec) -> Path | None:
    """The image folder (directory or zip) a data spec decodes; None for array datasets or no path."""
    path = spec.path or (settings.cifar10() if spec.name == "cifar10" else None)
    return Path(path).expanduser() if spec.name in ("cifar10", "imagefolder") and path else None


def check_decoding_memory(spec: DataSpec) -> memory.Estimate | None:
    """Refuse (DataError, with the figures and what to change) a data spec whose image folder would not
    fit in memory once decoded; None for datasets that are not image folders. A folder that cannot be
    listed passes here: choosing it on Experiments, and loading it in the job, say what is wrong."""
    path = imagefolder_path(spec)
    if path is None:
        return None
    try:
        est = memory.estimate(path, spec.image_size)
    except DataError:
        return None
    if not est.fits:
        raise DataError(est.problem())
    return est


def imagefolder_source(spec: DataSpec, path: Path):
    files, layout = list_imagefolder(path)
    size = spec.image_size
    # A zip changes as a whole; a folder's images can change below it, so its key covers every file.
    stamp = "|".join(f"{f}:{st.st_size}:{st.st_mtime_ns}" for f, st in
                     ([("", path.stat())] if path.is_file() else ((f, (path / f).stat()) for f in files)))
    # v3: native sizes capped at NATIVE_SIDE_LIMIT, every image mode scaled to 8 bit, zip names decoded as meant
    key = hashlib.sha256(f"{path.resolve()}|{stamp}|{size}|decode-v3".encode())
    cache = cache_dir() / f"imagefolder-{key.hexdigest()[:20]}.pt"
    if cache.is_file():
        try:
            c = torch.load(cache, weights_only=True)
            return (Split(c["train_x"], c["train_y"]), Split(c["test_x"], c["test_y"]), c["classes"], c["notes"])
        except Exception:  # a damaged cache is rebuilt, never trusted
            cache.unlink(missing_ok=True)
    footprint = memory.check(path, size)  # refused with the figures, rather than ended by the OOM killer
    log.info("image folder: %s", footprint.text())
    reader = open_reader(path)
    classes = layout["classes"]
    notes: list[str] = [ignored_note(layout["ignored"])] if layout["ignored"] else []
    splits = {}
    for split_name, items in layout["splits"].items():
        xs, ys, bad = [], [], []
        for member, label in items:
            try:
                xs.append(decode_image(reader.read(member), size))
                ys.append(label)
            except ImageError as e:
                bad.append(f"{member}: {e}")
        if bad:
            notes.append(f"skipped {len(bad)} unreadable image(s) in {split_name}: " + "; ".join(bad[:5])
                         + (" ..." if len(bad) > 5 else ""))
            log.warning(notes[-1])
        if len(bad) > MAX_BAD_SHARE * max(1, len(items)):
            raise DataError(f"{len(bad)} of {len(items)} images in {split_name} are unreadable "
                            f"(more than {MAX_BAD_SHARE:.0%}); first: {bad[0]}")
        if not xs:
            raise DataError(f"no readable images in {split_name} of {path}")
        sizes = {tuple(t.shape[-2:]) for t in xs}
        if len(sizes) > 1:  # mixed sizes: bring all to the most common one
            target = max(sizes, key=lambda s: sum(tuple(t.shape[-2:]) == s for t in xs))
            xs = [resize_uint8(t, target[0]) if tuple(t.shape[-2:]) != target else t for t in xs]
        channels = 3 if any(t.shape[0] == 3 for t in xs) else 1
        xs = [t.expand(channels, -1, -1) if t.shape[0] != channels else t for t in xs]
        splits[split_name] = Split(torch.stack(xs).contiguous(), torch.tensor(ys, dtype=torch.int64))
    reader.close()
    if "test" not in splits:  # one folder: hold out a fixed, seeded 20 %
        full = splits["all"]
        perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(1234))
        n_test = max(1, len(full) // 5)
        splits = {"train": full.subset(perm[n_test:]), "test": full.subset(perm[:n_test])}
    tr, te = splits["train"], splits["test"]
    if te.x.shape[-2:] != tr.x.shape[-2:]:  # the model is tested at the size it trains at
        notes.append(f"test images resized from {te.x.shape[-1]}x{te.x.shape[-2]} to the training images' "
                     f"{tr.x.shape[-1]}x{tr.x.shape[-2]}")
        log.warning(notes[-1])
        te = Split(resize_uint8(te.x, tuple(tr.x.shape[-2:])), te.y)
    if tr.x.shape[1] != te.x.shape[1]:
        c = max(tr.x.shape[1], te.x.shape[1])
        tr, te = Split(tr.x.expand(-1, c, -1, -1).contiguous(), tr.y), Split(te.x.expand(-1, c, -1, -1).contiguous(), te.y)
    atomic_torch_save({"train_x": tr.x, "train_y": tr.y, "test_x": te.x, "test_y": te.y,
                       "classes": classes, "notes": notes}, cache)
    return tr, te, classes, notes


def cache_dir() -> Path:
    d = workspace_root() / "cache"
    d.mkdir(parents=True, exist_ok=True)
    return d


def atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
