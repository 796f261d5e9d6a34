"""Dataset registry and the batch pipeline.

Every dataset is decoded once into uint8 tensors (N, C, H, W) kept in memory (and cached on disk
for image folders), so training never waits on JPEG decoding; normalisation, grey->RGB and
augmentation (random crop + flip) happen per batch on the training device, vectorised.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import settings
from .spec import DataSpec, SpecError
from .store import workspace_root

log = logging.getLogger("slimbench.data")

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
MAX_BAD_SHARE = 0.05            # a dataset with more unreadable images than this is refused
MAX_ARCHIVE_BYTES = 32 << 30    # zip bomb guard: total uncompressed size
MAX_MEMBER_RATIO = 200          # zip bomb guard: per-member compression ratio
MAX_IMAGE_PIXELS = 64_000_000   # decompression bomb guard for single images


class DataError(SpecError):
    def __init__(self, message: str):
        self.reason = message  # without the field prefix, for pages that name the dataset themselves
        super().__init__("data", message)


# A split this small is copied to the GPU once and batched there: no host-to-device copy per batch
# (CIFAR-10's 60k uint8 images are 184 MB).
DEVICE_CACHE_BYTES = 2 << 30


@dataclass
class Split:
    x: torch.Tensor   # uint8 (N, C, H, W)
    y: torch.Tensor   # int64 (N,)
    _copies: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: torch.Tensor) -> "Split":
        return Split(self.x[idx], self.y[idx])

    def on(self, device: torch.device) -> "Split":
        """This split resident on a CUDA device (kept for later loaders), or itself when it is on the
        CPU or too big to hold there."""
        if device.type != "cuda" or self.x.device == device or self.x.numel() > DEVICE_CACHE_BYTES:
            return self
        key = str(device)
        if key not in self._copies:
            self._copies[key] = Split(self.x.to(device), self.y.to(device))
        return self._copies[key]


@dataclass
class DataBundle:
    name: str
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    mean: list[float]
    std: list[float]
    batch_size: int = 64
    augment: bool = True
    flip: bool = True
    seed: int = 0
    notes: list[str] = field(default_factory=list)   # e.g. skipped bad files
    val_held_out: bool = True  # False: no validation split, so ``val`` is a slice of the training images

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.x.shape[-1])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def meta(self) -> dict:
        """What a checkpoint needs to preprocess new images the same way."""
        return {"dataset": self.name, "class_names": self.class_names, "mean": self.mean, "std": self.std,
                "input_size": list(self.input_shape), "channels": self.channels}

    def loader(self, split: str, device: torch.device | str = "cpu", train: bool = False,
               batch_size: int | None = None, limit: int | None = None) -> "BatchLoader":
        device = torch.device(device)
        s = getattr(self, split).on(device)
        if limit is not None and limit < len(s):
            s = s.subset(torch.arange(limit, device=s.x.device))
        return BatchLoader(s, self.mean, self.std, batch_size or self.batch_size, device,
                           shuffle=train, augment=train and self.augment, flip=self.flip, seed=self.seed)


class BatchLoader:
    """Yields normalised float batches on ``device``; reshuffles (seeded) on every pass."""

    def __init__(self, split: Split, mean, std, batch_size: int, device: torch.device,
                 shuffle: bool, augment: bool, flip: bool, seed: int):
        self.split, self.batch_size, self.device = split, batch_size, device
        self.shuffle, self.augment, self.flip = shuffle, augment, flip
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.gen = torch.Generator().manual_seed(seed)
        self.pad = max(1, split.x.shape[-1] // 8)

    def __len__(self) -> int:
        return (len(self.split) + self.batch_size - 1) // self.batch_size

    @property
    def num_images(self) -> int:
        return len(self.split)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.split)
        order = (torch.randperm(n, generator=self.gen) if self.shuffle else torch.arange(n)).to(self.split.x.device)
        # The epoch's random draws are made up front and moved once: no host-device sync per batch.
        draws = self.draws(n)
        # Drop a ragged last batch of one when training: BatchNorm cannot train on one sample.
        for start in range(0, n, self.batch_size):
            sl = slice(start, start + self.batch_size)
            idx = order[sl]
            if self.shuffle and len(idx) < 2:
                continue
            x = self.split.x[idx].to(self.device, non_blocking=True)
            y = self.split.y[idx].to(self.device, non_blocking=True)
            yield self.transform(x, None if draws is None else tuple(d[sl] for d in draws)), y

    def draws(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Crop offsets (rows, columns) and flip flags for ``n`` images, on the loader's device."""
        if not self.augment:
            return None
        k = 2 * self.pad + 1
        oy = torch.randint(0, k, (n,), generator=self.gen)
        ox = torch.randint(0, k, (n,), generator=self.gen)
        flip = torch.rand(n, generator=self.gen) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        return oy.to(self.device), ox.to(self.device), flip.to(self.device)

    def transform(self, x: torch.Tensor, draws: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        x = x.float().div_(255.0)
        if self.augment:
            oy, ox, flip = draws if draws is not None else self.draws(len(x))
            x = random_crop(x, self.pad, oy, ox)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        x = (x - self.mean) / self.std
        return to_rgb(x)


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Grey images feed 3-channel models: repeat the single channel."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def random_crop(x: torch.Tensor, pad: int, oy: torch.Tensor, ox: torch.Tensor) -> torch.Tensor:
    """Per-sample crop after zero padding at offsets ``oy``/``ox`` (0..2*pad), as two gathers (no
    Python loop over the batch)."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(b, c, h, w + 2 * pad)
    xp = xp.gather(2, rows)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(b, c, h, w)
    return xp.gather(3, cols)


# --------------------------------------------------------------------------------------------
# Sources: each returns (train Split, test Split, class names, notes)
# --------------------------------------------------------------------------------------------
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
    return _imagefolder_source(spec, Path(path).expanduser())


@register_dataset("imagefolder")
def _imagefolder(spec: DataSpec):
    if not spec.path:
        raise DataError("imagefolder needs data.path: a directory or .zip in ImageFolder layout "
                        "(train/<class>/..., test/<class>/... or just <class>/...)")
    return _imagefolder_source(spec, Path(spec.path).expanduser())


# --------------------------------------------------------------------------------------------
# ImageFolder (directory or zip), decoded once and cached
# --------------------------------------------------------------------------------------------
def _listing(path: Path) -> tuple[list[str], dict]:
    """The members of an ImageFolder zip or directory and their layout; DataError if unusable."""
    if not path.exists():
        raise DataError(f"not found: {path}")
    files = _zip_listing(path) if path.is_file() else _dir_listing(path)
    return files, _layout(files, path)


def _imagefolder_source(spec: DataSpec, path: Path):
    files, layout = _listing(path)
    size = spec.image_size
    # A zip changes as a whole; a folder's images can change below it, so its key covers every file.
    stamp = "|".join(f"{f}:{st.st_size}:{st.st_mtime_ns}" for f, st in
                     ([("", path.stat())] if path.is_file() else ((f, (path / f).stat()) for f in files)))
    key = hashlib.sha256(f"{path.resolve()}|{stamp}|{size}|notes-v2".encode())  # v2: notes name ignored files
    cache = cache_dir() / f"imagefolder-{key.hexdigest()[:20]}.pt"
    if cache.is_file():
        try:
            c = torch.load(cache, weights_only=True)
            return (Split(c["train_x"], c["train_y"]), Split(c["test_x"], c["test_y"]), c["classes"], c["notes"])
        except Exception:  # a damaged cache is rebuilt, never trusted
            cache.unlink(missing_ok=True)
    reader = _ZipReader(path) if path.is_file() else _DirReader(path)
    classes = layout["classes"]
    notes: list[str] = [_ignored_note(layout["ignored"])] if layout["ignored"] else []
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


def describe_imagefolder(path: str | Path) -> dict[str, Any]:
    """Classes and image counts per split of an ImageFolder directory or zip, from its listing alone
    (no image decoded: milliseconds), so a wrong upload is refused before any job is queued.
    Raises DataError with what is wrong."""
    _, layout = _listing(Path(path).expanduser())
    return {"classes": layout["classes"], "images": {k: len(v) for k, v in layout["splits"].items()},
            "ignored": layout["ignored"], "note": _ignored_note(layout["ignored"]) if layout["ignored"] else None}


def _zip_listing(path: Path) -> list[str]:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise DataError(f"{path} is not a readable zip archive") from None
    with zf:
        total = 0
        names = []
        for info in zf.infolist():
            name = info.filename
            if name.startswith(("/", "\\")) or ".." in Path(name).parts or ":" in name.split("/")[0]:
                raise DataError(f"unsafe path in archive {path.name}: {name!r} (absolute or '..')")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise DataError(f"archive {path.name} contains a symbolic link: {name!r}")
            total += info.file_size
            if info.compress_size and info.file_size / info.compress_size > MAX_MEMBER_RATIO and info.file_size > 1 << 20:
                raise DataError(f"archive member {name!r} expands {info.file_size / info.compress_size:.0f}x "
                                "(zip bomb guard)")
            names.append(name)  # folders too (trailing '/'), so an empty class folder is seen
        if total > MAX_ARCHIVE_BYTES:
            raise DataError(f"archive {path.name} expands to {total / 2**30:.1f} GiB "
                            f"(limit {MAX_ARCHIVE_BYTES / 2**30:.0f} GiB)")
    return names


def _dir_listing(path: Path) -> list[str]:
    out = []
    for p in sorted(path.rglob("*")):
        if p.is_symlink():
            continue  # never follow links out of the dataset folder
        if p.is_file():
            out.append(p.relative_to(path).as_posix())
        elif p.is_dir():
            out.append(p.relative_to(path).as_posix() + "/")
    return out


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


def _ignored_note(ignored: list[str]) -> str:
    return (f"ignored {len(ignored)} file(s) that are not images directly inside a class folder: "
            + ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else ""))


class _ZipReader:
    def __init__(self, path: Path):
        self.zf = zipfile.ZipFile(path)

    def read(self, member: str) -> bytes:
        return self.zf.read(member)

    def close(self) -> None:
        self.zf.close()


class _DirReader:
    def __init__(self, path: Path):
        self.root = path

    def read(self, member: str) -> bytes:
        return (self.root / member).read_bytes()

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------
class ImageError(ValueError):
    """An image that cannot be used, with a message a person can act on."""


def load_pil(raw: bytes):
    """Decode bytes into an RGB or L PIL image, refusing bombs and broken files with a clear message."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with Image.open(io.BytesIO(raw)) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ImageError(f"image is {w}x{h} pixels, over the {MAX_IMAGE_PIXELS:,} pixel limit")
            im.seek(0)  # animated images: first frame
            im = ImageOps.exif_transpose(im)
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                top = arr.max() or 1.0
                im = Image.fromarray((arr / top * 255).round().astype(np.uint8), "L")
            elif im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, rgba).convert("RGB")
            elif im.mode not in ("L", "RGB"):
                im = im.convert("RGB")  # CMYK, P, YCbCr, ...
            return im
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"refused as a decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise ImageError("not an image file (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"damaged or truncated image: {e}") from None


def decode_image(raw: bytes, size: int | None = None) -> torch.Tensor:
    im = load_pil(raw)
    arr = np.asarray(im, dtype=np.uint8)
    t = torch.from_numpy(arr.copy())
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    if size is not None and (t.shape[-1] != size or t.shape[-2] != size):
        t = resize_uint8(t, size)
    elif t.shape[-1] != t.shape[-2]:
        t = resize_uint8(t, min(t.shape[-2:]))
    return t.contiguous()


def resize_uint8(t: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """uint8 image(s) (C, H, W) or (N, C, H, W) resized to ``size`` (square) or (height, width)."""
    h, w = (size, size) if isinstance(size, int) else size
    batched = t.ndim == 4
    x = t if batched else t[None]
    out = torch.empty((x.shape[0], x.shape[1], h, w), dtype=torch.uint8)
    for i in range(0, len(x), 4096):  # chunks: bounded memory for large sets
        y = F.interpolate(x[i:i + 4096].float(), size=(h, w), mode="bilinear", antialias=True,
                          align_corners=False)
        out[i:i + 4096] = y.round().clamp_(0, 255).to(torch.uint8)
    return out if batched else out[0]


def preprocess_image(raw: bytes, meta: dict) -> torch.Tensor:
    """Bytes of any common image format -> one normalised (1, 3, H, W) batch for a bundle's model."""
    size = int(meta["input_size"][-1])
    t = decode_image(raw)
    channels = int(meta.get("channels", 3))
    if channels == 1 and t.shape[0] == 3:
        t = (t.float() * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True).round().to(torch.uint8)
    elif channels == 3 and t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    t = resize_uint8(t, size)
    x = t[None].float() / 255.0
    mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
    return to_rgb((x - mean) / std)


# --------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    d = workspace_root() / "cache"
    d.mkdir(parents=True, exist_ok=True)
    return d


def atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


_MEMO: dict[str, DataBundle] = {}


def load(spec: DataSpec) -> DataBundle:
    """Build the train/val/test splits for a data spec (memoised per process)."""
    key = repr(spec)
    if key in _MEMO:
        return _MEMO[key]
    if spec.name not in DATASETS:
        raise SpecError("data.name", f"unknown dataset {spec.name!r}; valid: {', '.join(DATASETS)}")
    train, test, classes, notes = DATASETS[spec.name](spec)
    if spec.image_size and train.x.shape[-1] != spec.image_size:
        train = Split(resize_uint8(train.x, spec.image_size), train.y)
        test = Split(resize_uint8(test.x, spec.image_size), test.y)
    g = torch.Generator().manual_seed(spec.seed)
    perm = torch.randperm(len(train), generator=g)
    n_val = int(round(len(train) * spec.val_fraction))
    val, train = train.subset(perm[:n_val]), train.subset(perm[n_val:])
    if spec.limit is not None and spec.limit < len(train):
        train = train.subset(torch.arange(spec.limit))
    if spec.test_limit is not None and spec.test_limit < len(test):
        test = test.subset(torch.randperm(len(test), generator=torch.Generator().manual_seed(7))[:spec.test_limit])
    held_out = len(val) > 0
    if not held_out:  # no validation requested: select on a slice of train, never on test
        val = train.subset(torch.arange(min(len(train), 1000)))
        notes = [*notes, f"no validation split (val_fraction {spec.val_fraction}): the best epoch is chosen on "
                         f"{len(val)} training images"]
    xf = train.x[: 20000].float().div_(255.0)
    mean = xf.mean(dim=(0, 2, 3)).tolist()
    std = xf.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    bundle = DataBundle(spec.name, train, val, test, classes, mean, std, spec.batch_size,
                        spec.augment, COLOUR_FLIP.get(spec.name, True), spec.seed, notes, held_out)
    _MEMO.clear()  # keep at most one dataset resident
    _MEMO[key] = bundle
    return bundle
