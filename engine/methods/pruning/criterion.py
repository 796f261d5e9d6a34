"""Criteria: how important a weight or a channel is. No surgery here, only scores.

Channel criteria are torch-pruning ``Importance`` objects scoring a dependency *group* (a channel
and every layer coupled to it by residual adds, batch norm, depthwise convs or concatenation).
"""
from __future__ import annotations

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

CHANNEL_CRITERIA = ("l1", "l2", "lamp", "bn_scale", "taylor")
WEIGHT_NORMS = ("l1", "l2")


def channel_importance(name: str) -> tp.importance.Importance:
    """Per-channel group score; channels are ranked within each group (local pruning)."""
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "lamp":      # Lee et al. 2021: each score over the sum of those at least as large in its
        return tp.importance.LAMPImportance(p=2)  # layer; within a layer it ranks as l2, across layers fairly
    if name == "bn_scale":  # Network Slimming: |gamma| of the batch norms in the group
        return tp.importance.BNScaleImportance()
    if name == "taylor":    # first-order Taylor |w * dL/dw| (Molchanov et al. 2019); needs .grad
        return tp.importance.GroupTaylorImportance()
    raise ValueError(f"unknown channel criterion {name!r}")


def bn_scale_magnitude() -> tp.importance.Importance:
    """Raw mean |gamma| per channel, comparable *across* groups (for one global threshold)."""
    return tp.importance.BNScaleImportance(normalizer=None)


def accumulate_gradients(model: nn.Module, data, device: torch.device, batches: int) -> None:
    """Fill ``.grad`` with the summed loss gradient of a few shuffled training batches (for Taylor).

    The model stays in eval mode so the batch-norm running statistics are not disturbed.
    """
    model.to(device).eval()
    model.zero_grad(set_to_none=True)
    for x, y in itertools.islice(data.loader("train", device, train=True), batches):
        F.cross_entropy(model(x), y).backward()


def is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


OUT_CHANNEL_FNS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)


def producing_filters(group: tp.Group):
    """(layer, indices, root indices) of every conv/linear in ``group`` whose *output* is the channel
    (a depthwise conv's output is its input channel, whichever side the graph reached it from)."""
    for i, (dep, idxs) in enumerate(group):
        layer = dep.target.module
        if isinstance(layer, (nn.Conv2d, nn.Linear)) and (dep.handler in OUT_CHANNEL_FNS or is_depthwise(layer)):
            yield layer, list(idxs), group[i].root_idxs


class FilterNorm(tp.importance.Importance):
    """L2 norm of each channel's producing filters, summed over coupled layers (SFP's criterion)."""

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor | None:
        total = None
        for layer, idxs, root_idxs in producing_filters(group):
            sq = layer.weight.detach()[idxs].flatten(1).pow(2).sum(1).float()
            if layer.bias is not None:
                sq = sq + layer.bias.detach()[idxs].float().pow(2)
            if total is None:
                total = torch.zeros(len(group[0].idxs), device=sq.device)
            total.scatter_add_(0, torch.tensor(root_idxs, device=sq.device), sq)
        return None if total is None else total.sqrt()


def is_channel_norm(dep) -> bool:
    """Whether a group's dependency is an affine batch norm normalising the group's channels."""
    m = dep.target.module
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and dep.handler == tp.prune_batchnorm_out_channels


def channel_norms(group: tp.Group) -> list[tuple[nn.modules.batchnorm._BatchNorm, list[int]]]:
    """(batch norm, indices) of every batch norm normalising the group's channels."""
    return [(dep.target.module, list(idxs)) for dep, idxs in group if is_channel_norm(dep)]


class ScaleNorm(tp.importance.Importance):
    """SFP's L2 criterion where a batch norm follows the filters: the L2 norm of the channel's BN
    scales (gamma) over the coupled batch norms. BN divides out the filter's own norm, so gamma is
    what scales the channel; where no batch norm follows, the filters' L2 norm (``FilterNorm``)."""

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor | None:
        if not channel_norms(group):
            return FilterNorm()(group)
        total = torch.zeros(len(group[0].idxs), device=group[0].dep.target.module.weight.device)
        for i, (dep, idxs) in enumerate(group):
            if is_channel_norm(dep):
                total.scatter_add_(0, torch.tensor(group[i].root_idxs, device=total.device),
                                   dep.target.module.weight.detach()[list(idxs)].float().pow(2))
        return total.sqrt()


def weight_scales(weights: list[torch.Tensor], norm: str) -> list[torch.Tensor]:
    """Each layer's mean |w| (``l1``) or RMS (``l2``): what its scores are divided by so that layers
    with different weight scales compete fairly in one global ranking."""
    return [(w.detach().abs().mean() if norm == "l1" else w.detach().pow(2).mean().sqrt()).clamp_min(1e-12)
            for w in weights]
