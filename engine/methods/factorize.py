"""Rewrite k x k convolutions into cheaper shapes, initialised from the original weights.

- ``depthwise_separable``: k x k (C_in -> C_out) -> depthwise k x k on each input channel, then a
  pointwise 1 x 1 (C_in -> C_out). The product of the two is W[o, i] ~= P[o, i] * D[i]: one
  spatial kernel per input channel, scaled per output. That constraint decouples over input
  channels, so the least-squares best init is, for every i, the rank-1 SVD of the C_out x (k*k)
  slice W[:, i]: D[i] = the top right singular vector, P[:, i] = sigma * the top left one.
- ``asymmetric``: N x N -> N x 1 (C_in -> C_mid) then 1 x N (C_mid -> C_out). Regrouping W as a
  (C_in*N_h) x (C_out*N_w) matrix makes that pair exactly a rank-C_mid factorisation of it, so
  its truncated SVD is the least-squares best init (exact when C_mid reaches the full rank).

A conv is only rewritten when the new pair has fewer MACs; then the model is fine-tuned.

Two more rewrites share the method (``engine.methods.rewrites``): ``pool_to_conv`` (a 3 x 3 stride-2
convolution for each down-sampling pool) and ``relu_activation`` (ReLU for SiLU/Hardswish/GELU/Mish);
each refuses a net without such a layer, and is fine-tuned and measured like the two above.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from .. import measure
from ..spec import SpecError
from . import MIN_MAC_SAVING, Param, register
from . import rewrites
from .lowrank import decompose, output_sizes, replace
from .recovery import RECOVERY_LR_DEFAULT

MODES = ("depthwise_separable", "asymmetric")          # the factorisations (they save MACs)
REWRITES = ("pool_to_conv", "relu_activation")          # the layer swaps (they save no MACs)


def candidate(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups == 1 and max(m.kernel_size) > 1 and m.padding_mode == "zeros"


@torch.no_grad()
def depthwise_separable(m: nn.Conv2d) -> nn.Sequential:
    c_out, c_in, kh, kw = m.weight.shape
    w = m.weight.detach().double().permute(1, 0, 2, 3).reshape(c_in, c_out, kh * kw)  # per input channel
    u, s, vh = torch.linalg.svd(w, full_matrices=False)        # batched over input channels
    depth = vh[:, 0, :].reshape(c_in, 1, kh, kw)
    point = (u[:, :, 0] * s[:, :1]).T.reshape(c_out, c_in, 1, 1)
    dw = nn.Conv2d(c_in, c_in, m.kernel_size, m.stride, m.padding, m.dilation, groups=c_in, bias=False)
    pw = nn.Conv2d(c_in, c_out, 1, bias=m.bias is not None)
    dw.weight.copy_(depth.to(m.weight.dtype))
    pw.weight.copy_(point.to(m.weight.dtype))
    if m.bias is not None:
        pw.bias.copy_(m.bias)
    return nn.Sequential(dw, pw).to(m.weight.device)


def asymmetric(m: nn.Conv2d, mid: int) -> nn.Sequential:
    """N x 1 (C_in -> mid) then 1 x N (mid -> C_out): the spatial decomposition of lowrank_svd at rank
    ``mid`` (capped at the full rank)."""
    return decompose(m, mid, "spatial")


def rewrite(model: nn.Module, input_shape: tuple[int, ...], mode: str, mid_ratio: float) -> dict[str, Any]:
    """Replace every candidate conv whose rewrite saves MACs; returns per-layer MACs before/after."""
    before = output_sizes(model, input_shape)
    plans = {}
    for name, m in list(model.named_modules()):
        if not candidate(m) or name not in before:
            continue
        new = depthwise_separable(m) if mode == "depthwise_separable" else \
            asymmetric(m, max(1, round(mid_ratio * m.out_channels)))
        plans[name] = (m, new)
    # Measure the candidates in place (exact output sizes incl. strides), then keep the cheaper ones.
    for name, (_, new) in plans.items():
        replace(model, name, new)
    after = output_sizes(model, input_shape)
    report = {}
    for name, (old, new) in plans.items():
        macs_old = old.weight.numel() * before[name]
        macs_new = sum(c.weight.numel() * after[f"{name}.{i}"] for i, c in enumerate(new))
        if macs_new < macs_old:
            report[name] = {"macs_before": macs_old, "macs_after": macs_new,
                            "layers": [f"{tuple(c.kernel_size)} groups={c.groups}" for c in new]}
        else:
            replace(model, name, old)
    return report


def require_saving(model: nn.Module, ctx, params: dict, report: dict[str, Any], total: int) -> None:
    """Refuse a rewrite that saves under MIN_MAC_SAVING of the MACs (before any fine-tune): nets built
    from depthwise and 1 x 1 convs (MobileNets, EfficientNet, ShuffleNet, SqueezeNet) have nothing
    or only a stem to rewrite. Says what the other mode would save, or to use another method."""
    saved = sum(r["macs_before"] - r["macs_after"] for r in report.values())
    if saved >= MIN_MAC_SAVING * total:
        return
    other = MODES[1 - MODES.index(params["mode"])]
    probe = copy.deepcopy(ctx.base if ctx.base is not None else model).cpu()
    other_saved = sum(r["macs_before"] - r["macs_after"]
                      for r in rewrite(probe, ctx.input_shape, other, params["mid_ratio"]).values()) / max(1, total)
    instead = (f"mode {other} would remove {other_saved:.0%}" if other_saved >= MIN_MAC_SAVING else
               f"mode {other} would remove {other_saved:.1%} too; use lowrank_svd or prune_structured")
    raise SpecError("method.params.mode", f"{params['mode']} would rewrite {len(report)} convolution(s) of "
                    f"{ctx.arch} and remove {saved / max(1, total):.1%} of its MACs (under {MIN_MAC_SAVING:.0%}: "
                    f"it has few k x k convolutions with groups=1 to rewrite); {instead}")


@register("factorize", family="factorization", params=[
    Param("mode", "str", "depthwise_separable", "depthwise_separable: k x k -> depthwise k x k + pointwise 1 x 1; "
          "asymmetric: N x N -> N x 1 then 1 x N; pool_to_conv: each stride-2 max/average pool -> a 3 x 3 "
          "stride-2 conv, started as a 3 x 3 average (Springenberg et al. 2015); relu_activation: SiLU, "
          "Hardswish, GELU, Mish -> ReLU", choices=MODES + REWRITES),
    Param("mid_ratio", "float", 1.0, "asymmetric only: channels between the N x 1 and 1 x N convs, as a share "
          "of the output channels", low=0.0, high=4.0, low_open=True),
    Param("finetune_epochs", "int", 2, "fine-tuning epochs after the rewrite", low=0, high=1000),
    Param("finetune_lr", "float", None, "learning rate of the fine-tune after the rewrite (blank: the recovery "
          "default, " + RECOVERY_LR_DEFAULT + ")", low=0, high=10, low_open=True, optional=True),
], help="Rewrite k x k convolutions as depthwise-separable or asymmetric (N x 1 + 1 x N) pairs, initialised by "
        "SVD from the original weights; or replace down-sampling pools by 3 x 3 stride-2 convolutions "
        "(pool_to_conv), or costly activations by ReLU (relu_activation); then fine-tune.")
def factorize(model, ctx, params):
    model.to("cpu")
    if params["mode"] in REWRITES:
        return swap_layers(model, ctx, params)
    total = measure.count_macs(model, ctx.input_shape)["macs"]
    report = rewrite(model, ctx.input_shape, params["mode"], params["mid_ratio"])
    require_saving(model, ctx, params, report, total)
    ctx.log.info("factorize (%s): %d convolutions rewritten", params["mode"], len(report))
    ctx.recalibrate(model, "rewrite")
    ctx.extra["factorized_layers"] = report
    ctx.extra["factorize_macs_saved"] = sum(r["macs_before"] - r["macs_after"] for r in report.values())
    if params["finetune_epochs"] > 0 and report:
        ctx.finetune(model, epochs=params["finetune_epochs"], lr=params["finetune_lr"])
    return model


def swap_layers(model, ctx, params):
    """pool_to_conv / relu_activation: refused (before training) where the net has no such layer."""
    total = measure.count_macs(model, ctx.input_shape)["macs"]
    if params["mode"] == "pool_to_conv":
        report = rewrites.pool_to_conv(model, ctx.input_shape, ctx.arch)
    else:
        report = rewrites.relu_activation(model, ctx.arch)
    ctx.log.info("factorize (%s): %d layers replaced", params["mode"], len(report))
    ctx.recalibrate(model, "rewrite")
    ctx.extra["factorized_layers"] = report
    ctx.extra["factorize_macs_saved"] = total - measure.count_macs(model, ctx.input_shape)["macs"]
    if params["finetune_epochs"] > 0:
        ctx.finetune(model, epochs=params["finetune_epochs"], lr=params["finetune_lr"])
    return model
