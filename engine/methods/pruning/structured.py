"""prune_structured: remove whole channels (DepGraph, Fang et al. 2023), prune -> fine-tune in steps."""
from __future__ import annotations

import torch.nn as nn

from ... import measure, training
from ...spec import SpecError
from .. import Param, register
from . import report, surgery
from .criterion import CHANNEL_CRITERIA, accumulate_gradients, channel_importance
from .schedule import bisect_decreasing

MAX_RATIO = 0.9           # every layer keeps at least a tenth of its channels
MAC_TOLERANCE = 0.05      # a MAC target counts as met within +-5 % of it

PARAMS = (
    Param("ratio", "float", 0.5, "share of each layer's channels removed (ignored when target_macs is set)",
          low=0, high=MAX_RATIO, low_open=True),
    Param("target_macs", "float", None, "instead of ratio: share of the base MACs to keep, e.g. 0.5; the "
          "uniform channel ratio that meets it (+-5 %) is searched", low=0, high=1, low_open=True, high_open=True,
          optional=True),
    Param("criterion", "str", "l1", "channel importance: l1/l2 norm of the coupled weights, bn_scale (|gamma|), "
          "taylor (|w * dL/dw| on a few training batches)", choices=CHANNEL_CRITERIA),
    Param("steps", "int", 1, "prune -> fine-tune rounds reaching the ratio linearly", low=1, high=50),
    Param("finetune_epochs", "int", 1, "recovery epochs after each round", low=0, high=1000),
    Param("grad_batches", "int", 8, "training batches whose gradients the taylor criterion sums", low=1, high=100000),
)


def uniform_prune(model: nn.Module, input_shape, ratio: float) -> None:
    """Remove ``ratio`` of every group's channels by L1 norm (widths are all a MAC search needs)."""
    surgery.prune_step(surgery.make_pruner(model, input_shape, channel_importance("l1"), ratio))


def ratio_for_macs(model: nn.Module, input_shape, target: float, where: str = "method.params.target_macs") -> float:
    """The uniform channel ratio whose pruned model keeps ``target`` of the MACs (bisection on measured MACs)."""
    base = measure.count_macs(model, input_shape)["macs"]

    def share(ratio: float) -> float:
        clone = surgery.pruned_copy(model, lambda m: uniform_prune(m, input_shape, ratio))
        return measure.count_macs(clone, input_shape)["macs"] / base

    ratio, got = bisect_decreasing(share, 0.0, MAX_RATIO, target)
    if abs(got / target - 1) > MAC_TOLERANCE:
        raise SpecError(where, f"{target:g} of the MACs cannot be met by uniform channel pruning; "
                        f"the nearest reachable share is {got:.3f}")
    return ratio


def require_bn(model: nn.Module, criterion: str, arch: str) -> None:
    if criterion == "bn_scale" and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        raise SpecError("method.params.criterion", f"bn_scale ranks channels by batch-norm scales but {arch} has "
                        "no batch norm; use l1, l2 or taylor")


@register("prune_structured", family="pruning", params=PARAMS,
          help="Channel pruning that physically removes filters, keeping residual adds, batch norms, depthwise "
               "groups and concatenations consistent with torch-pruning's dependency graph. Fewer MACs, "
               "parameters and real latency; the classifier's outputs are unchanged.")
def prune_structured(model, ctx, params):
    surgery.check_supported(ctx.arch, "prune_structured")
    require_bn(model, params["criterion"], ctx.arch)
    shape = ctx.input_shape
    ratio = params["ratio"] if params["target_macs"] is None else ratio_for_macs(model, shape, params["target_macs"])
    pruner = surgery.make_pruner(model, shape, channel_importance(params["criterion"]), ratio, params["steps"])
    for k in range(params["steps"]):
        if ctx.cancelled():
            raise training.Cancelled()
        if params["criterion"] == "taylor":
            accumulate_gradients(model, ctx.data, ctx.device, params["grad_batches"])
        surgery.prune_step(pruner)
        model.zero_grad(set_to_none=True)
        ctx.log.info("step %d/%d: %d MACs", k + 1, params["steps"], measure.count_macs(model, shape)["macs"])
        ctx.finetune(model, params["finetune_epochs"], phase=f"finetune {k + 1}/{params['steps']}")
    ctx.extra.update(report.against_base(ctx, model))
    ctx.extra.update({"channel_ratio": ratio, "criterion": params["criterion"]})
    return model
