"""DistributedDataParallel primitives the training loop needs; inert unless a process group of more
than one rank is initialised (``engine.distributed`` launches the ranks and sets it up).

N ranks train as one device would: every rank draws the same seeded permutation and augmentation
as the single-device loader, and each global batch of ``data.batch_size`` images is split across
the ranks. DDP averages the ranks' gradients, so each step is the step of that global batch, the
step count per epoch and the learning rate are those of one device, and nothing needs rescaling
(a rank-local batch of ``batch_size`` with the LR unscaled halved the steps per epoch: 87.5 % against
94.4 % on digits). BatchNorm sees the whole global batch through :func:`sync_batchnorm`, or else its
running statistics are averaged over the ranks each epoch (:func:`average_buffers`).
"""
from __future__ import annotations

import contextlib
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
    """The single-device loader's batches, each split across the ranks: rank r of N takes the r-th of
    N near-equal slices of every global batch (same seeded order and augmentation draws on every
    rank). Every rank thus takes the same number of steps (an unequal count would leave a rank
    waiting in all-reduce), and together the ranks see exactly the images one device would, batch
    by batch. A training batch too small to give every rank two images is dropped, as the
    single-device loader drops a batch of one (BatchNorm cannot train on one image)."""

    def __init__(self, loader, rank: int, world: int):
        self.loader, self.rank, self.world = loader, rank, world
        self.batch_size = loader.batch_size

    def _batches(self) -> list[slice]:
        n, b = len(self.loader.split), self.batch_size
        least = 2 * self.world if self.loader.shuffle else self.world
        return [slice(s, min(n, s + b)) for s in range(0, n, b) if min(n, s + b) - s >= least]

    def _mine(self, batch: slice) -> slice:
        size = batch.stop - batch.start
        lo = batch.start + self.rank * size // self.world
        return slice(lo, batch.start + (self.rank + 1) * size // self.world)

    @property
    def num_images(self) -> int:
        return sum(self._mine(s).stop - self._mine(s).start for s in self._batches())

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ld = self.loader
        n = len(ld.split)
        # The same draws, in the same order, as BatchLoader.__iter__: one device's epoch, split.
        order = (torch.randperm(n, generator=ld.gen) if ld.shuffle else torch.arange(n)).to(ld.split.x.device)
        draws = ld.draws(n)
        _epoch_images.append(0)
        for batch in self._batches():
            sl = self._mine(batch)
            idx = order[sl]
            _epoch_images[-1] += len(idx)
            x = ld.split.x[idx].to(ld.device, non_blocking=True)
            y = ld.split.y[idx].to(ld.device, non_blocking=True)
            yield ld.transform(x, None if draws is None else tuple(d[sl] for d in draws)), y


# -- BatchNorm across ranks ------------------------------------------------------------------------
class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks, differentiable: the gradient of a sum is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch for CPU ranks (torch's SyncBatchNorm is GPU-only): the per-channel
    sums are all-reduced, and so are their gradients in backward, as SyncBatchNorm does. Evaluation
    and single-process use are plain BatchNorm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_active()):
            return super().forward(x)
        dims = [d for d in range(x.dim()) if d != 1]
        xf = x.float()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32, device=x.device)
        stats = torch.cat([xf.sum(dims), xf.square().sum(dims), count])
        stats = _AllReduceSum.apply(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean.square()).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


@contextlib.contextmanager
def sync_batchnorm(model: nn.Module, device: torch.device, on: bool = True):
    """Within the block (when ``on`` and distributed), every BatchNorm of ``model`` normalises over the
    global batch, all ranks' slices together.

    The layers change class in place, not module: the method's hooks hold these very modules (slimming's
    BN-scale penalty, soft pruning's groups), and the kept model must stay plain BatchNorm for bundles,
    pruning and export. CUDA: torch's SyncBatchNorm (NCCL); CPU: the gloo implementation above."""
    if not (on and is_active()):
        yield
        return
    cls = nn.SyncBatchNorm if device.type == "cuda" else _GlooSyncBatchNorm
    swapped = [(m, type(m)) for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, (cls, nn.SyncBatchNorm))]
    for m, _ in swapped:
        m.__class__ = cls
        m.process_group = None  # nn.SyncBatchNorm reads it: the whole world
    try:
        yield
    finally:
        for m, old in swapped:
            m.__class__ = old
            del m.process_group


@torch.no_grad()
def average_buffers(model: nn.Module) -> None:
    """Every rank's float buffers (BatchNorm's running mean and variance) replaced by their mean over the
    ranks: without SyncBatchNorm each rank's statistics come from its own slice of every batch, and DDP
    would otherwise keep rank 0's alone (it broadcasts rank 0's buffers before each forward)."""
    if not is_active():
        return
    world = dist.get_world_size()
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b.div_(world)


def reset_image_counts() -> None:
    _epoch_images.clear()


def gather_image_counts(device: torch.device) -> list[list[int]]:
    """Every rank's per-epoch image counts (a collective: all ranks call it after their fit)."""
    t = torch.tensor(_epoch_images, dtype=torch.long, device=device)
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [o.tolist() for o in out]
