"""Quantisation-aware training: fine-tune with fake INT8 (torch.ao's FakeQuantize), then ship a real INT8 model.

During the fine-tuning every conv and linear layer sees its input and its weight rounded to the INT8 grid of
the chosen format (straight-through gradients), so the weights learn to sit where rounding costs little.
Batch norm is frozen (running statistics fixed) and each conv's weight is fake-quantised as it will be once
the batch norm after it is folded in, which is what the INT8 exporter does: the model trained is the model
shipped. The fake quantisers are then removed and the fine-tuned FP32 model is quantised statically
(``quantize.static_int8``) in the same format; its activation ranges are min/max statistics on the same
training images, as torch.ao's moving-average observers were, so the exported INT8 model is the trained one.
"""
from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn as nn
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver
from torch.nn.utils import parametrize

from .. import recovery_lr
from ..errors import SpecError
from . import Param, register
from .quantize import INT8_PARAMS, check_int8_params, resolve_format, static_int8

QUANTISED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def weight_quantizer(fmt: str, per_channel: bool) -> FakeQuantize:
    """Symmetric int8 weights (7-bit for ``qdq_reduce_range``), one scale per output channel or per tensor."""
    top = 63 if fmt == "qdq_reduce_range" else 127
    if per_channel:
        return FakeQuantize(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-top - 1, quant_max=top,
                            dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)
    return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=-top - 1, quant_max=top, dtype=torch.qint8,
                        qscheme=torch.per_tensor_symmetric)


def activation_quantizer(fmt: str) -> FakeQuantize:
    """Per-tensor affine activations: int8 for S8S8 formats (NNCF's too), else uint8."""
    signed = fmt in ("qdq_s8s8", "openvino")
    return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=-128 if signed else 0,
                        quant_max=127 if signed else 255, dtype=torch.qint8 if signed else torch.quint8,
                        qscheme=torch.per_tensor_affine)


class FoldedWeightQuant(nn.Module):
    """A conv weight fake-quantised as the INT8 model holds it: with the (frozen) batch norm after it folded
    in, then unfolded again so that the batch norm still applies. The batch norm is held outside the module
    tree (a list), so it is neither a second copy in the state dict nor a parameter counted twice."""

    def __init__(self, quantizer: FakeQuantize, bn: nn.Module | None):
        super().__init__()
        self.quantizer, self._bn = quantizer, [bn]

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        bn = self._bn[0]
        if bn is None:
            return self.quantizer(w)
        scale = bn.running_var.add(bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight
        # a channel whose gamma is (near) zero contributes nothing folded: keep its weight out of the division
        scale = torch.where(scale.abs() < 1e-8, torch.full_like(scale, 1e-8), scale).reshape(-1, *[1] * (w.dim() - 1))
        return self.quantizer(w * scale) / scale


def conv_bn_pairs(model: nn.Module) -> dict[str, nn.Module]:
    """Conv module name -> the batch norm that only it feeds (what the exporter folds); {} where the model
    does not trace (then weights are fake-quantised unfolded, and the record says so)."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:
        return {}
    mods = dict(model.named_modules())
    pairs = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), BATCH_NORMS):
            continue
        src = node.args[0] if node.args else None
        if (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1
                and isinstance(mods.get(src.target), (nn.Conv1d, nn.Conv2d, nn.Conv3d))):
            pairs[src.target] = mods[node.target]
    return pairs


def _frozen_train(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)   # frozen batch norm: running statistics, never batch statistics


def _quantise_input(mod: nn.Module, args: tuple) -> tuple:
    return (mod.qat_input(args[0]), *args[1:])


def attach(model: nn.Module, fmt: str, per_channel: bool) -> dict[str, Any]:
    """Fake-quantise every conv/linear input and weight in place; returns what ``detach`` undoes."""
    pairs = conv_bn_pairs(model)
    handles, layers = [], []
    for name, m in model.named_modules():
        if isinstance(m, BATCH_NORMS) and any(bn is m for bn in pairs.values()):
            m.train = types.MethodType(_frozen_train, m)
            m.eval()
        if not isinstance(m, QUANTISED):
            continue
        parametrize.register_parametrization(m, "weight", FoldedWeightQuant(weight_quantizer(fmt, per_channel),
                                                                            pairs.get(name)))
        m.qat_input = activation_quantizer(fmt)
        handles.append(m.register_forward_pre_hook(_quantise_input))
        layers.append(name)
    return {"handles": handles, "layers": layers, "folded": len(pairs)}


def detach(model: nn.Module, state: dict[str, Any]) -> None:
    """Remove the fake quantisers: a plain FP32 model with the fine-tuned weights (batch norm thawed)."""
    for h in state["handles"]:
        h.remove()
    for m in model.modules():
        if isinstance(m, QUANTISED) and parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
            del m.qat_input
        if isinstance(m, BATCH_NORMS) and "train" in m.__dict__:
            del m.train


def check_qat(params: dict, spec: Any) -> None:
    check_int8_params(params, spec)
    if getattr(getattr(spec, "train", None), "devices", 1) > 1:   # the fake quantisers live in this process's model (hooks, parametrisations)
        raise SpecError("train.devices", "qat fine-tunes in one process; set train.devices to 1")


@register("qat", family="quantization", params=[
    Param("epochs", "int", 2, "fine-tuning epochs with fake INT8", low=1, high=1000),
    Param("lr", "float", None, "learning rate of the fine-tuning (blank: a tenth of the training rate)",
          low=0, low_open=True, optional=True),
    *INT8_PARAMS,
], help="Quantisation-aware training: fine-tune a few epochs with fake INT8 inputs and weights (torch.ao "
        "FakeQuantize, batch norm frozen and folded as exported), then export a real INT8 model in the chosen "
        "format; measured like quantize_int8, against which it is the slower but more faithful choice.",
   torch_output=False, check=check_qat)
def qat(model, ctx, params):
    fmt = resolve_format(params["format"], "method.params.format", params["calibration"])
    model = model.to("cpu")
    state = attach(model, fmt, params["per_channel"])
    try:
        # QAT starts from a trained net it does not cut: it stays at the small rate, not a rewound one
        ctx.finetune(model, params["epochs"], params["lr"], phase="qat", policy=recovery_lr.TENTH,
                     amp="off")  # float32: the fake quantisers simulate INT8 arithmetic, not bfloat16
    finally:
        detach(model, state)
    model = model.to("cpu").eval()
    ctx.extra["qat"] = {"layers": len(state["layers"]), "batch_norms_folded": state["folded"],
                        "epochs": params["epochs"]}
    if not state["folded"]:
        ctx.log.warning("QAT: the model does not trace with torch.fx, so its weights were fake-quantised before "
                        "batch-norm folding; the exported INT8 model may differ more from the trained one")
    return static_int8(model, ctx, {**params, "max_drop_pt": None}, fmt, method="qat")
