"""sensitivity: an analysis, not a compression. Each prunable layer (channel group) is pruned
alone at several ratios and the validation accuracy recorded; the curves suggest per-layer ratios
that stay within a tolerated accuracy loss. The returned model is the unchanged base."""
from __future__ import annotations

import time
from typing import Any

from ... import training
from ...spec import SpecError
from .. import Param, register
from . import surgery
from .criterion import CHANNEL_CRITERIA, accumulate_gradients, channel_importance
from .structured import require_bn


def check_params(params: dict, spec: Any) -> None:
    ratios = params["ratios"]
    if not ratios:
        raise SpecError("method.params.ratios", "must list at least one ratio")
    for i, r in enumerate(ratios):
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1:
            raise SpecError(f"method.params.ratios[{i}]", f"must be a number in (0, 1), got {r!r}")
    if len(set(ratios)) != len(ratios):
        raise SpecError("method.params.ratios", "must not repeat a ratio")


PARAMS = (
    Param("ratios", "list", [0.25, 0.5, 0.75], "shares of a layer's channels removed, one evaluation each"),
    Param("criterion", "str", "l1", "which channels go first", choices=CHANNEL_CRITERIA),
    Param("max_loss", "float", 0.01, "tolerated drop in validation accuracy (0.01 = 1 point) for the "
          "suggested per-layer ratios", low=0, high=1),
    Param("max_layers", "int", 32, "analyse at most this many layers, the most MAC-heavy first", low=1, high=10000),
    Param("grad_batches", "int", 8, "training batches whose gradients the taylor criterion sums", low=1, high=100000),
)


def group_macs(model, shape, groups: list[surgery.GroupScores]) -> dict[str, int]:
    """MACs of the layers each group touches (what pruning it can save)."""
    per_module = surgery.layer_macs(model, shape)
    macs = {name: per_module.get(m, 0) for name, m in model.named_modules()}
    return {g.root: sum(macs.get(n, 0) for n in g.layers) for g in groups}


def suggest(curve: dict[str, float], ratios: list[float], base_acc: float, max_loss: float) -> float:
    """The largest ratio up to which every tried ratio stays within ``max_loss`` (0 if none)."""
    best = 0.0
    for r in ratios:
        if base_acc - curve[f"{r:g}"] > max_loss:
            break
        best = r
    return best


@register("sensitivity", family="pruning", params=PARAMS, check=check_params,
          help="Per-layer pruning sensitivity: every layer is pruned alone at each ratio and the validation "
               "accuracy recorded (the curves), with suggested per-layer ratios for a tolerated loss. The model "
               "itself is returned unchanged.")
def sensitivity(model, ctx, params):
    surgery.check_supported(ctx.arch, "sensitivity", model)
    require_bn(model, params["criterion"], ctx.arch)
    if not ctx.data.val_held_out:  # accuracy on training images falls too slowly: ratios too bold
        raise SpecError("data.val_fraction", "sensitivity measures accuracy on held-out validation images: "
                                             "set val_fraction > 0")
    shape, ratios = ctx.input_shape, sorted(params["ratios"])
    ctx.progress(phase="sensitivity:ranking")
    if params["criterion"] == "taylor":
        accumulate_gradients(model, ctx.data, ctx.device, params["grad_batches"])
    groups = surgery.score_groups(model, shape, channel_importance(params["criterion"]))
    model.zero_grad(set_to_none=True)
    cost = group_macs(model.cpu(), shape, groups)
    heavy = set(sorted(cost, key=cost.get, reverse=True)[:params["max_layers"]])
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    groups = sorted((g for g in groups if g.root in heavy), key=lambda g: order[g.root])  # heaviest, network order
    base_acc = ctx.evaluate(model)["accuracy"]
    curves: dict[str, dict[str, float]] = {}
    total = len(groups) * len(ratios)
    ctx.progress(phase="sensitivity", step=0, steps=total)  # the probes' count shows before the first ends
    ctx.log.info("sensitivity: %d probes (%d layers x %d ratios)", total, len(groups), len(ratios))
    t0 = time.perf_counter()
    for i, g in enumerate(groups):
        curves[g.root] = {}
        for j, r in enumerate(ratios):
            if ctx.cancelled():
                raise training.Cancelled()
            plan = {g.root: (g.handler, surgery.lowest(g.scores, int(r * len(g.scores))))}
            clone = surgery.pruned_copy(model.cpu(), lambda m: surgery.apply_plan(m, shape, plan))
            ctx.recalibrate(clone, "sensitivity probes")  # stale statistics made a 10 % cut look like 60 % accuracy
            curves[g.root][f"{r:g}"] = ctx.evaluate(clone)["accuracy"]
            done = i * len(ratios) + j + 1
            elapsed = time.perf_counter() - t0
            ctx.progress(phase="sensitivity", step=done, steps=total, layer=g.root, ratio=r,
                         eta_s=elapsed / done * (total - done))
            ctx.log.info("sensitivity probe %d/%d: %s pruned %g -> val acc %.4f (%.1f s)", done, total, g.root, r,
                         curves[g.root][f"{r:g}"], elapsed)
    suggested = {layer: suggest(curve, ratios, base_acc, params["max_loss"]) for layer, curve in curves.items()}
    ctx.extra.update({
        "sensitivity": curves,
        "sensitivity_base_val_acc": base_acc,
        "sensitivity_layers": {g.root: {"channels": len(g.scores), "macs": cost[g.root], "coupled": g.layers[1:]}
                               for g in groups},
        "suggested_ratios": suggested,
    })
    return model
