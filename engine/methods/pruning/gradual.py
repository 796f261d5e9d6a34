"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune", arXiv 1710.01878).

Sparsity rises during training along their cubic schedule,
    s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (n * dt))^3,   t = t_0, t_0 + dt, ..., t_0 + n * dt,
from s_i = 0 at the first step to the target s_f at ``prune_end`` of the training steps, fast while
the network has many redundant weights and slowly as it approaches the target; the steps after
that train at the final sparsity. At each of the n updates the lowest-magnitude weights are masked
(ranked as ``prune_unstructured`` ranks them); after every optimiser step the masks are applied
again, so masked weights stay zero while the others learn to make up for them.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def cubic_sparsity(final: float, k: int, n: int, initial: float = 0.0) -> float:
    """Zhu & Gupta's sparsity after update ``k`` of ``n`` (k = n reaches ``final``)."""
    return final + (initial - final) * (1.0 - k / n) ** 3


def update_steps(total_steps: int, prune_end: float, interval: int) -> list[int]:
    """The optimiser steps (1-based) after which the masks are updated: every ``interval`` steps up to
    ``prune_end`` of the training steps (Zhu & Gupta's t_0 + k dt); one update at that point when
    the training is shorter than one interval."""
    end = max(1, round(prune_end * total_steps))
    if end < interval:
        return [end]
    return [k * interval for k in range(1, end // interval + 1)]


@torch.no_grad()
def magnitude_masks(layers: list[nn.Module], amount: float, scope: str, scales: list[torch.Tensor]) -> list[torch.Tensor]:
    """Masks (1 keep, 0 pruned) that zero the ``amount`` lowest-scored weights: |w| per layer (scope
    layer), or |w| / the layer's scale in one ranking over all layers (scope global)."""
    if scope == "layer":
        return [_lowest_zeroed(m.weight.detach().abs().flatten(), amount).view_as(m.weight) for m in layers]
    scores = torch.cat([(m.weight.detach().abs() / s).flatten() for m, s in zip(layers, scales)])
    flat = _lowest_zeroed(scores, amount)
    return [chunk.view_as(m.weight) for m, chunk in zip(layers, flat.split([m.weight.numel() for m in layers]))]


def _lowest_zeroed(scores: torch.Tensor, amount: float) -> torch.Tensor:
    mask = torch.ones_like(scores)
    k = round(amount * scores.numel())
    if k:
        mask[torch.topk(scores, k, largest=False).indices] = 0
    return mask


class GradualPruner:
    """The ``after_step`` hook of a gradual pruning run: updates the masks at the scheduled steps and
    applies them after every step. Holds the layer names, not the modules, so a DDP rank's pickled
    copy works on its own model."""

    def __init__(self, names: list[str], final: float, scope: str, scales: list[torch.Tensor], steps: list[int]):
        self.names, self.final, self.scope, self.scales = names, final, scope, scales
        self.steps = {s: k + 1 for k, s in enumerate(steps)}
        self.n = len(steps)
        self.step = 0
        self.masks: list[torch.Tensor] | None = None
        self.schedule: list[float] = []           # the sparsity set at each update

    def __call__(self, model: nn.Module) -> None:
        self.step += 1
        layers = [model.get_submodule(n) for n in self.names]
        k = self.steps.get(self.step)
        if k is not None:
            amount = cubic_sparsity(self.final, k, self.n)
            self.masks = magnitude_masks(layers, amount, self.scope, [s.to(layers[0].weight.device) for s in self.scales])
            self.schedule.append(amount)
        if self.masks is not None:
            with torch.no_grad():
                for m, mask in zip(layers, self.masks):
                    m.weight.mul_(mask.to(m.weight.device))
