"""DistributedDataParallel primitives the training loop needs; inert unless a process group of more
than one rank is initialised (``engine.distributed`` launches the ranks and sets it up)."""
from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

_epoch_images: list[int] = []  # images this rank trained on, one entry per pass over its shard


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The module the training step calls: DDP around ``model`` when distributed, else ``model``."""
    if not is_active():
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard(loader):
    return ShardedLoader(loader, dist.get_rank(), dist.get_world_size()) if is_active() else loader


class ShardedLoader:
    """DistributedSampler for the in-memory BatchLoader: every rank draws the same seeded permutation,
    pads it by wrapping round to a multiple of the world size and keeps every N-th index from its
    rank, so shards are disjoint and equally long (unequal step counts would leave a rank waiting
    in all-reduce)."""

    def __init__(self, loader, rank: int, world: int):
        self.loader, self.rank, self.world = loader, rank, world
        self.batch_size = loader.batch_size

    @property
    def num_images(self) -> int:
        return math.ceil(len(self.loader.split) / self.world)

    def __len__(self) -> int:
        full, rest = divmod(self.num_images, self.batch_size)
        return full + (rest >= 2 or (rest == 1 and not self.loader.shuffle))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ld = self.loader
        n = len(ld.split)
        order = torch.randperm(n, generator=ld.gen) if ld.shuffle else torch.arange(n)
        mine = torch.cat([order, order[: self.num_images * self.world - n]])[self.rank::self.world]
        _epoch_images.append(0)
        for start in range(0, len(mine), self.batch_size):
            idx = mine[start:start + self.batch_size]
            if ld.shuffle and len(idx) < 2:  # as BatchLoader: BatchNorm cannot train on one sample
                continue
            _epoch_images[-1] += len(idx)
            yield ld.transform(ld.split.x[idx].to(ld.device)), ld.split.y[idx].to(ld.device)


def reset_image_counts() -> None:
    _epoch_images.clear()


def gather_image_counts(device: torch.device) -> list[list[int]]:
    """Every rank's per-epoch image counts (a collective: all ranks call it after their fit)."""
    t = torch.tensor(_epoch_images, dtype=torch.long, device=device)
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [o.tolist() for o in out]
