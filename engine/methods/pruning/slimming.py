"""slimming: MorphNet-style resource-aware shrinking (Gordon et al. 2018) on batch-norm scales.

1. Train with an L1 penalty on every batch-norm scale |gamma_c| weighted by the MACs channel c
   costs (its share of the conv producing it and of the convs consuming it): expensive channels
   are pushed to zero harder (the FLOP regulariser).
2. Remove the channels whose |gamma| (mean over coupled batch norms) falls below one global
   threshold, chosen by binary search on *measured* MACs to keep ``target_macs`` of the base
   (+-5 %); fine-tune.
3. ``expand``: widen every channel group of the shrunk net by one factor, found by bisection so the
   MACs return to the base's, and retrain that architecture from scratch (MorphNet's expand step:
   the shrink decides the proportions, the expand spends the budget on them). Widths may exceed
   the original ones, so the widened net is freshly initialised rather than grown from the weights.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ... import measure, training, user_models
from ...spec import SpecError
from .. import Param, recovery, register
from . import report, surgery
from .criterion import OUT_CHANNEL_FNS, bn_scale_magnitude, is_depthwise
from .schedule import bisect_decreasing, nearest_index
from .structured import MAC_TOLERANCE

PARAMS = (
    Param("strength", "float", 1e-4, "weight of the MAC-weighted L1 penalty on batch-norm scales", low=0, high=1),
    Param("target_macs", "float", 0.5, "share of the base MACs the shrunk network keeps", low=0.02, high=1,
          high_open=True),
    Param("epochs", "int", 3, "training epochs with the penalty", low=0, high=10000),
    *recovery.params(epochs=1),
    Param("expand", "bool", False, "widen the shrunk network uniformly back to the base MACs and retrain it "
          "from scratch for train.epochs"),
)


def _channels(m: nn.Module, out_side: bool) -> int:
    """How many channels share the layer's MACs on the side the group touches."""
    if isinstance(m, nn.Conv2d):
        return m.out_channels if out_side or is_depthwise(m) else m.in_channels
    return m.out_features if out_side else m.in_features


def channel_costs(model: nn.Module, input_shape) -> dict[nn.BatchNorm2d, torch.Tensor]:
    """Per batch-norm channel: the MACs that disappear with it, normalised to a mean of 1.

    A channel's cost is its share of every conv it feeds into or comes out of (a conv with C
    output channels spends macs / C on each); coupled batch norms (residual adds) split it."""
    macs = surgery.layer_macs(model, input_shape)
    DG = surgery.graph(model, input_shape)
    costs = {m: torch.zeros(m.num_features) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    for group in surgery.channel_groups(DG, model):
        per_channel, bns, seen = 0.0, [], set()
        for dep, idxs in group:
            m = dep.target.module
            if isinstance(m, nn.BatchNorm2d) and m not in seen:
                bns.append((m, list(idxs)))
            elif m in macs and m not in seen:
                per_channel += macs[m] / _channels(m, out_side=dep.handler in OUT_CHANNEL_FNS)
            seen.add(m)
        for bn, idxs in bns:
            costs[bn][idxs] += per_channel / len(bns)
    mean = torch.cat(list(costs.values())).mean().clamp_min(1e-12) if costs else 1.0
    return {bn: c / mean for bn, c in costs.items()}


class MacWeightedL1:
    """The regulariser hook: strength * sum over batch norms of cost_c * |gamma_c|."""

    def __init__(self, costs: dict[nn.BatchNorm2d, torch.Tensor], strength: float):
        self.costs, self.strength = costs, strength

    def __call__(self, model: nn.Module) -> torch.Tensor:
        total = 0.0
        for bn, c in self.costs.items():
            if c.device != bn.weight.device:
                self.costs[bn] = c = c.to(bn.weight.device)
            total = total + (c * bn.weight.abs()).sum()
        return self.strength * total


def shrink_plan(groups: list[surgery.GroupScores], threshold: float) -> dict:
    return {g.root: (g.handler, surgery.lowest(g.scores, int((g.scores < threshold).sum()))) for g in groups}


def shrink_to_macs(model: nn.Module, input_shape, target: float) -> tuple[float, float]:
    """Remove every channel whose mean |gamma| is below the threshold that keeps ``target`` of the
    MACs; returns (threshold, achieved MAC share)."""
    base = measure.count_macs(model, input_shape)["macs"]
    groups = surgery.score_groups(model, input_shape, bn_scale_magnitude())
    values = torch.cat([g.scores for g in groups]).unique().sort().values.tolist()

    def threshold(k: int) -> float:  # prune below the k-th smallest score (k = len: all but one per group)
        return values[k] if k < len(values) else float("inf")

    def share(k: int) -> float:
        plan = shrink_plan(groups, threshold(k))
        clone = surgery.pruned_copy(model, lambda m: surgery.apply_plan(m, input_shape, plan))
        return measure.count_macs(clone, input_shape)["macs"] / base

    k, got = nearest_index(share, len(values), target)
    if abs(got / target - 1) > MAC_TOLERANCE:
        raise SpecError("method.params.target_macs", f"{target:g} of the MACs is out of reach by removing "
                        f"batch-norm channels; the nearest reachable share is {got:.3f}")
    surgery.apply_plan(model, input_shape, shrink_plan(groups, threshold(k)))
    return threshold(k), got


def widen_to_macs(ctx, model: nn.Module, target_macs: int) -> tuple[nn.Module, float]:
    """The uniformly widened, freshly initialised network closest to ``target_macs``; (model, factor)."""
    shape = ctx.input_shape

    def build(factor: float) -> nn.Module:
        return surgery.widened(model, shape, ctx.arch, ctx.data.num_classes, ctx.small_input, factor)

    now = measure.count_macs(model, shape)["macs"]
    hi = 2.0 * (target_macs / max(1, now)) ** 0.5 + 1.0   # MACs grow about with the square of the width
    # bisect_decreasing wants a falling function: search on -MACs(factor).
    factor, _ = bisect_decreasing(lambda f: -measure.count_macs(build(f), shape)["macs"], 1.0, hi, -target_macs)
    return build(factor), factor


@register("slimming", family="pruning", params=PARAMS,
          help="MorphNet-style shrinking: L1 on batch-norm scales weighted by each channel's MAC cost, then "
               "channels under a threshold chosen to meet target_macs are removed and the net fine-tuned; "
               "optionally expanded uniformly back to the base MAC budget and retrained.")
def slimming(model, ctx, params):
    surgery.check_supported(ctx.arch, "slimming", model)
    if params["expand"] and user_models.source_of(model) is not None:
        raise SpecError("method.params.expand", f"{ctx.arch} is your own architecture: expanding rebuilds it from "
                        "the architecture registry, which has no builder for it; leave expand off")
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        raise SpecError("model", f"slimming ranks channels by batch-norm scales but {ctx.arch} has no batch norm; "
                        "use prune_structured")
    grouped = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels),
                   None)
    if params["expand"] and grouped is not None:  # refused now, not after the shrinking has trained
        raise SpecError("method.params.expand", f"expand widens every channel group by one factor, which grouped "
                        f"convolutions ({grouped} of {ctx.arch}: groups of fixed width) cannot follow; "
                        "use expand=false")
    shape = ctx.input_shape
    base_macs = measure.count_macs(model, shape)["macs"]
    if params["epochs"] and params["strength"] > 0:
        reg = MacWeightedL1(channel_costs(model, shape), params["strength"])
        # the last epoch, not the most accurate: that is the least regularised one, often the first,
        # and the cut below would then remove channels the penalty never drove to zero
        ctx.fit(model, epochs=params["epochs"], phase="sparsify", regularizer=reg, keep_best=False)
    if ctx.cancelled():
        raise training.Cancelled()
    model.cpu()
    threshold, share = shrink_to_macs(model, shape, params["target_macs"])
    ctx.log.info("removed channels with |gamma| < %.4g: %.3f of the base MACs", threshold, share)
    ctx.recalibrate(model, "shrink")
    recovery.Recovery(ctx, params)(model)
    extra = {"target_macs": params["target_macs"], "gamma_threshold": threshold, "shrunk_mac_share": share}
    if params["expand"]:
        extra["shrunk_widths"] = surgery.widths(model)
        model, extra["expand_factor"] = widen_to_macs(ctx, model.cpu(), base_macs)
        ctx.fit(model, phase="expand")
    ctx.extra.update(report.against_base(ctx, model))
    ctx.extra.update(extra)
    return model
