"""A data spec -> its DataBundle: splits, validation hold-out, limits and normalisation statistics."""
from __future__ import annotations

import torch

from ..spec import DataSpec, SpecError
from .bundle import DataBundle, Split
from .images import resize_uint8
from .sources import COLOUR_FLIP, DATASETS

_MEMO: dict[str, DataBundle] = {}


# data.batch_size unset: what trains well and fast on each device. CPU: 64 (measured with the lr, see
# engine.training); CUDA: 512 with the lr scaled linearly (training.default_lr), as at 64 a CIFAR
# ResNet step is kernel-launch bound (not measured here: `make bench-gpu` times the engine at it).
DEFAULT_BATCH = {"cpu": 64, "cuda": 512}


def default_batch_size(device_type: str) -> int:
    return DEFAULT_BATCH.get(device_type, DEFAULT_BATCH["cpu"])


def load(spec: DataSpec, device_type: str = "cpu") -> DataBundle:
    """Build the train/val/test splits for a data spec (memoised per process); ``device_type`` (where it
    trains) picks the batch size when the spec leaves it unset."""
    key = repr(spec) + device_type
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
        val = train.subset(torch.arange(min(len(train), 1000, spec.val_limit or 1000)))
        notes = [*notes, f"no validation split (val_fraction {spec.val_fraction}): the best epoch is chosen on "
                         f"{len(val)} training images"]
    elif spec.val_limit is not None and spec.val_limit < len(val):  # val is a seeded random draw already
        val = val.subset(torch.arange(spec.val_limit))
    mean, std = channel_stats(train.x[:20000])
    batch = spec.batch_size or default_batch_size(device_type)
    bundle = DataBundle(spec.name, train, val, test, classes, mean, std, batch,
                        spec.augment, COLOUR_FLIP.get(spec.name, True), spec.seed, notes, held_out)
    _MEMO.clear()  # keep at most one dataset resident
    _MEMO[key] = bundle
    return bundle


def channel_stats(x: torch.Tensor, chunk: int = 512) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (at least 1e-3) of uint8 images scaled to [0, 1], summed in float64
    chunks: a float copy of 20,000 images at 224 px would take 12 GB."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros(x.shape[1], dtype=torch.float64)
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk].to(torch.float64).div_(255.0)
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
    n = len(x) * x.shape[-2] * x.shape[-1]
    mean = total / n
    var = (squares - n * mean.square()) / max(1, n - 1)  # unbiased, as torch.std
    return mean.tolist(), var.clamp_min(0).sqrt().clamp_min(1e-3).tolist()
