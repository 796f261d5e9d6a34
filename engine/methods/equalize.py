"""Cross-layer equalisation (CLE; Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and
Bias Correction") of a PyTorch model before INT8.

Two convolutions joined by a ReLU (or nothing) compute the same function when output channel i of the first is
divided by s_i and input channel i of the second multiplied by s_i (ReLU(x / s) = ReLU(x) / s for s > 0).
Choosing s_i = sqrt(r1_i / r2_i), with r1_i and r2_i the ranges of those two weight slices, gives both the same
range, so a per-tensor or per-channel INT8 grid wastes fewer levels on one outlier channel. MobileNet-class nets,
whose depthwise convolutions have wildly different channel ranges, gain most; the paper iterates over the chain
of pairs until the scales stop changing.

PyTorch's own ``torch.ao.quantization._equalize`` handles dense pairs only; the depthwise convolutions that make
CLE matter in MobileNets are handled here. Batch-norm is folded into its convolution first (its scale would
otherwise undo the rescaling), and ReLU6 becomes ReLU, as in the paper: a clip at 6 does not commute with
scaling. That swap changes a net only where an activation exceeded 6, which ``equalize`` reports.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

PASSTHROUGH = (nn.ReLU, nn.Identity)       # scaling by s > 0 commutes with these
RELU6 = (nn.ReLU6, nn.Hardtanh)            # clips at a fixed value: swapped for ReLU before equalising


@dataclass
class Equalized:
    model: nn.Module
    pairs: int            # convolution pairs equalised
    folded_bn: int        # batch-norms folded into their convolution
    relu6_swapped: int    # ReLU6 turned into ReLU
    iterations: int


def _leaves(seq: nn.Sequential) -> list[tuple[nn.Module, str, nn.Module | None]]:
    """(parent, attribute, module) of every layer run in order by ``seq`` and the Sequentials nested in it;
    a module with its own forward (a residual block) is a barrier (None): nothing is equalised across it."""
    out: list[tuple[nn.Module, str, nn.Module | None]] = []
    for name, child in seq.named_children():
        if isinstance(child, nn.Sequential):
            out.extend(_leaves(child))
        elif len(list(child.children())) == 0:
            out.append((seq, name, child))
        else:
            out.append((seq, name, None))
    return out


def _chains(module: nn.Module) -> list[list[tuple[nn.Module, str, nn.Module | None]]]:
    """Every outermost Sequential's layers, in order (its nested Sequentials inlined), and those of the
    Sequentials inside its barriers (a residual block's body)."""
    if isinstance(module, nn.Sequential):
        chain = _leaves(module)
        inner = [c for p, n, m in chain if m is None for c in _chains(getattr(p, n))]
        return [chain, *inner]
    return [c for child in module.children() for c in _chains(child)]


def _fold_and_swap(model: nn.Module) -> tuple[int, int]:
    """Fold each Conv2d -> BatchNorm2d in a chain into the Conv2d; swap ReLU6 for ReLU. In place."""
    folded = swapped = 0
    for chain in _chains(model):
        for (p1, n1, m1), (p2, n2, m2) in zip(chain, chain[1:]):
            if isinstance(m1, nn.Conv2d) and isinstance(m2, nn.BatchNorm2d):
                setattr(p1, n1, fuse_conv_bn_eval(m1, m2))
                setattr(p2, n2, nn.Identity())
                folded += 1
        for p, n, m in chain:
            if isinstance(m, RELU6) and (not isinstance(m, nn.Hardtanh) or m.min_val == 0):
                setattr(p, n, nn.ReLU(inplace=getattr(m, "inplace", False)))
                swapped += 1
    return folded, swapped


def _pairs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.Conv2d]]:
    """Consecutive Conv2d pairs (dense or depthwise) with only ReLU/Identity between them."""
    pairs = []
    for chain in _chains(model):
        convs = [(i, m) for i, (_, _, m) in enumerate(chain) if isinstance(m, nn.Conv2d)]
        for (i, a), (j, b) in zip(convs, convs[1:]):
            between = [m for _, _, m in chain[i + 1:j]]
            if all(isinstance(m, PASSTHROUGH) for m in between) and a.out_channels == b.in_channels \
                    and _dense_or_depthwise(a) and _dense_or_depthwise(b):
                pairs.append((a, b))
    return pairs


def _dense_or_depthwise(c: nn.Conv2d) -> bool:
    return c.groups == 1 or c.groups == c.in_channels == c.out_channels


@torch.no_grad()
def _equalize_pair(a: nn.Conv2d, b: nn.Conv2d) -> float:
    """Rescale one pair in place; returns the largest change of a scale from 1 (for convergence)."""
    r1 = a.weight.abs().amax(dim=(1, 2, 3))
    # a depthwise conv's input channel i is its output channel i (weights [C, 1, k, k])
    r2 = b.weight.abs().amax(dim=(1, 2, 3)) if b.groups > 1 else b.weight.abs().amax(dim=(0, 2, 3))
    s = torch.where((r1 > 0) & (r2 > 0), torch.sqrt(r1 / r2.clamp_min(1e-12)), torch.ones_like(r1))
    a.weight.div_(s.view(-1, 1, 1, 1))
    if a.bias is not None:
        a.bias.div_(s)
    b.weight.mul_(s.view(-1, 1, 1, 1) if b.groups > 1 else s.view(1, -1, 1, 1))
    return float((s - 1).abs().max()) if len(s) else 0.0


def equalize(model: nn.Module, iterations: int = 20, tol: float = 1e-3) -> Equalized:
    """A copy of ``model`` (eval mode) with batch-norms folded, ReLU6 swapped for ReLU and every equalisable
    convolution pair rescaled, sweeping the pairs until no scale moves by more than ``tol``."""
    model = copy.deepcopy(model).eval()
    folded, swapped = _fold_and_swap(model)
    pairs = _pairs(model)
    done = 0
    for done in range(1, iterations + 1):
        if max((_equalize_pair(a, b) for a, b in pairs), default=0.0) < tol:
            break
    return Equalized(model, len(pairs), folded, swapped, done if pairs else 0)
