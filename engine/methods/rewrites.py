"""Two layer rewrites the efficient-network literature makes by hand, each fine-tuned afterwards:

- ``pool_to_conv``: every max/average pooling layer that down-samples (stride 2) becomes a 3 x 3
  stride-2 convolution over the same channels (Springenberg et al. 2015, "Striving for simplicity:
  the all convolutional net": learnt down-sampling instead of a fixed one). It starts as a 3 x 3
  average of each channel (exactly the average pool 3 x 3 / 2 with padding 1), so the net begins
  close to where it was and learns from there. It adds MACs (C x C x 9 per output position); what
  it may buy is accuracy, or a graph without pooling for hardware that lacks it.
- ``relu_activation``: every SiLU, Hardswish, GELU or Mish becomes a ReLU, the cheapest activation
  on every runtime and the one INT8 kernels fuse best (Howard et al. 2019 kept ReLU in MobileNetV3's
  early layers for its cost). MACs are unchanged: the gain is latency, which the run measures.

Each refuses, before any training, a net that has no such layer: the result would be the starting
model under another name.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .. import measure
from ..spec import SpecError
from .lowrank import replace

POOLS = (nn.MaxPool2d, nn.AvgPool2d)
COSTLY_ACTIVATIONS = (nn.SiLU, nn.Hardswish, nn.GELU, nn.Mish)


@torch.no_grad()
def _inputs(model: nn.Module, input_shape: tuple[int, ...], kinds: tuple[type, ...]) -> dict[str, tuple]:
    """(input shape, output shape) of each module of ``kinds`` for one image."""
    shapes: dict[str, tuple] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: shapes.__setitem__(n, (tuple(i[0].shape), tuple(o.shape))))
             for n, m in model.named_modules() if isinstance(m, kinds)]
    measure.forward_once(model, input_shape, hooks)
    return shapes


@torch.no_grad()
def strided_conv(channels: int, in_shape: tuple, out_shape: tuple) -> nn.Conv2d | None:
    """A 3 x 3 stride-2 conv (channels -> channels) giving ``out_shape`` from ``in_shape``, initialised
    as a per-channel 3 x 3 average; None when no padding of 0 or 1 gives that shape."""
    for padding in (1, 0):
        conv = nn.Conv2d(channels, channels, 3, 2, padding, bias=False)
        size = [(s + 2 * padding - 3) // 2 + 1 for s in in_shape[2:]]
        if size == list(out_shape[2:]):
            conv.weight.zero_()
            idx = torch.arange(channels)
            conv.weight[idx, idx] = 1.0 / 9
            return conv
    return None


def pool_to_conv(model: nn.Module, input_shape: tuple[int, ...], arch: str) -> dict[str, Any]:
    shapes = _inputs(model, input_shape, POOLS)
    report: dict[str, Any] = {}
    for name, m in list(model.named_modules()):
        stride = m.stride if isinstance(m, POOLS) else None
        if name not in shapes or stride not in (2, (2, 2)):
            continue
        (in_shape, out_shape) = shapes[name]
        conv = strided_conv(in_shape[1], in_shape, out_shape)
        if conv is None:
            continue
        p = next(model.parameters())
        replace(model, name, conv.to(p.device, p.dtype))
        report[name] = {"from": f"{type(m).__name__}({m.kernel_size}, stride {m.stride})",
                        "to": f"Conv2d 3x3 stride 2, {in_shape[1]} -> {in_shape[1]} channels, padding {conv.padding[0]}",
                        "macs_added": conv.weight.numel() * out_shape[2] * out_shape[3]}
    if not report:
        raise SpecError("method.params.mode", f"pool_to_conv: {arch} has no max or average pooling layer with stride "
                                              "2 to replace (ResNets with the small-input stem, MobileNets and "
                                              "EfficientNet down-sample with strided convolutions already)")
    return report


def relu_activation(model: nn.Module, arch: str) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for name, m in list(model.named_modules()):
        if isinstance(m, COSTLY_ACTIVATIONS):
            replace(model, name, nn.ReLU(inplace=False))
            report[name] = {"from": type(m).__name__, "to": "ReLU"}
    if report:
        # ReLU's backward reads its output: an in-place op after it (MobileNetV3's Dropout(inplace=True))
        # would overwrite that output, where Hardswish's backward read its input
        for m in model.modules():
            if getattr(m, "inplace", False) is True:
                m.inplace = False
    if not report:
        raise SpecError("method.params.mode", f"relu_activation: {arch} has no SiLU, Hardswish, GELU or Mish module "
                                              "to replace by ReLU (its activations are ReLU-like already, or "
                                              "called as functions)")
    return report
