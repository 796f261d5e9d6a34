"""Decoded data in memory and the batches it feeds training.

A split is uint8 tensors (N, C, H, W) kept in memory, so training never waits on JPEG decoding;
normalisation, grey->RGB and augmentation (random crop + flip) happen per batch on the training
device, vectorised.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F

from .images import to_rgb

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

    def content_hash(self) -> str:
        """sha256 of the split's content: its images' shape and bytes (as decoded, resized and limited)
        and their labels. Two splits of equal name and size but other images differ here."""
        h = hashlib.sha256()
        for t in (self.x, self.y):
            t = t.detach().to("cpu").contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
        return h.hexdigest()

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
               batch_size: int | None = None, limit: int | None = None, train_seed: int = 0) -> "BatchLoader":
        """Batches of ``split``; with ``train``, shuffled and augmented from ``order_seed(data seed,
        train_seed)``: ``fit`` passes ``train.seed``; probes that must not vary with it (batch-norm
        recalibration, importance scores) leave it 0. Without ``train`` the order is fixed."""
        device = torch.device(device)
        s = getattr(self, split).on(device)
        if limit is not None and limit < len(s):
            s = s.subset(torch.arange(limit, device=s.x.device))
        return BatchLoader(s, self.mean, self.std, batch_size or self.batch_size, device,
                           shuffle=train, augment=train and self.augment, flip=self.flip,
                           seed=order_seed(self.seed, train_seed))


def order_seed(data_seed: int, train_seed: int) -> int:
    """The seed of a training loader's batch order and augmentation draws, from both seeds: ``data.seed``
    picks the validation split, ``train.seed`` everything random in training, this order included (it
    once came from ``data.seed`` alone, so fine-tunes of one start at train seeds 0, 1, 2 were one run).

    ``data_seed + train_seed * 0x9E3779B9`` modulo 2**32: at train seed 0 the order is the one runs made
    before train.seed reached it (their results reproduce); an odd multiplier makes every train seed of
    one data seed (and every data seed of one train seed) a different stream. 32 bits, because torch's
    CPU generator keeps only a seed's low 32 (seeds 0 and 2**32 draw alike)."""
    return (data_seed + train_seed * 0x9E3779B9) % 2**32


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


def random_crop(x: torch.Tensor, pad: int, oy: torch.Tensor, ox: torch.Tensor) -> torch.Tensor:
    """Per-sample crop after zero padding at offsets ``oy``/``ox`` (0..2*pad), as two gathers (no
    Python loop over the batch)."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(b, c, h, w + 2 * pad)
    xp = xp.gather(2, rows)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(b, c, h, w)
    return xp.gather(3, cols)
