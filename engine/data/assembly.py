"""A data spec -> its DataBundle: splits, validation hold-out, limits and normalisation statistics."""
from __future__ import annotations

import torch

from ..spec import DataSpec, SpecError
from .bundle import DataBundle, Split
from .images import resize_uint8
from .sources import COLOUR_FLIP, DATASETS

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
