"""prune_structured: remove whole channels (DepGraph, Fang et al. 2023), prune -> fine-tune in steps."""
from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from ... import measure, models, training
from ...spec import SpecError
from .. import Param, recovery, register
from . import heads, report, surgery
from .criterion import CHANNEL_CRITERIA, accumulate_gradients, channel_importance
from .schedule import bisect_decreasing, largest_passing
from .sparse_learning import SPARSE_MODES, sparsify

MAX_RATIO = 0.9           # every layer keeps at least a tenth of its channels
MAC_TOLERANCE = 0.05      # a MAC target counts as met within +-5 % of it
LOSS_PROBES = 7           # bisection steps of a max_loss search after probing the largest cut: 1/128 of it

ALLOCATIONS = ("uniform", "global", "sensitivity")

PARAMS = (
    Param("ratio", "float", 0.5, "share of the channels removed: of each layer's (uniform) or of all (global); "
          "ignored when target_macs or max_loss is set", low=0, high=MAX_RATIO, low_open=True),
    Param("target_macs", "float", None, "instead of ratio: share of the base MACs to keep, e.g. 0.5; the "
          "ratio that meets it (+-5 %) is searched (with allocation=sensitivity: one factor scaling every "
          "suggested ratio)", low=0, high=1, low_open=True, high_open=True, optional=True),
    Param("max_loss", "float", None, "instead of ratio: tolerated drop in validation accuracy of the pruned "
          "model before fine-tuning (0.02 = 2 points); the largest ratio (allocation=sensitivity: scale of the "
          "suggestions) whose one-shot cut stays within it is searched, one validation pass per probe",
          low=0, high=1, high_open=True, optional=True),
    Param("allocation", "str", "uniform", "how the cut is spread over layers. uniform: every layer loses ratio; "
          "global: one ranking of all channels (scores normalised per layer), no layer loses more than 90 %; "
          "sensitivity: each layer loses the share a sensitivity run suggested for it (layers it did not "
          "analyse keep every channel)", choices=ALLOCATIONS),
    Param("sensitivity_run", "run", None, "allocation=sensitivity: the finished sensitivity run whose suggested "
          "per-layer ratios are applied", optional=True, run_method="sensitivity"),
    Param("head_ratio", "float", 0.0, "vision transformers: share of each block's attention heads removed "
          "whole (rounded down, one always stays), ranked by the criterion, alongside the MLP channels; a "
          "target_macs or max_loss search then sizes the channel cut with these heads gone",
          low=0, high=MAX_RATIO),
    Param("criterion", "str", "l1", "channel importance of a coupled group: l1/l2, its weights' magnitude "
          "(Li et al. 2017; DepGraph, Fang et al. 2023, ranks by the group L2 norm); lamp, l2 scaled as LAMP "
          "(Lee et al. 2021) so a global ranking compares layers fairly (within a layer it ranks as l2); "
          "bn_scale, |gamma| of its batch norms (Network Slimming, Liu et al. 2017); taylor, |w * dL/dw| on a "
          "few training batches (Molchanov et al. 2019)", choices=CHANNEL_CRITERIA),
    Param("steps", "int", 1, "iterative pruning (Han et al. 2015; Molchanov et al. 2019): cut -> recover "
          "rounds reaching the ratio linearly, each followed by finetune_epochs", low=1, high=50),
    Param("round_to", "int", None, "keep a multiple of this many channels in every pruned layer (8 or 16: "
          "vector units and ONNX Runtime kernels run unaligned widths slowly); the kept count is rounded up, "
          "so a layer narrower than round_to stays whole", low=2, high=256, optional=True),
    Param("sparse_learning", "str", "off", "a sparsity-inducing training phase before the cut (DepGraph's "
          "'+SL'): group_norm, DepGraph's group-norm regulariser (Fang et al. 2023); growing_reg, GReg's "
          "growing L2 penalty (Wang et al. 2021); both torch-pruning's", choices=SPARSE_MODES),
    Param("sparse_epochs", "int", 1, "epochs of sparse learning (at the fine-tune learning rate)", low=1,
          high=10000),
    Param("sparse_reg", "float", 5e-4, "regularisation coefficient of sparse learning (DepGraph's CIFAR "
          "setting: 5e-4; for growing_reg, its increment every 10 steps)", low=0, high=1, low_open=True),
    *recovery.params(epochs=1),
    Param("grad_batches", "int", 8, "training batches whose gradients the taylor criterion sums", low=1, high=100000),
)


def check_params(params: dict, spec: Any) -> None:
    if params["target_macs"] is not None and params["max_loss"] is not None:
        raise SpecError("method.params.max_loss", "set either target_macs or max_loss, not both")
    by_sensitivity = params["allocation"] == "sensitivity"
    if by_sensitivity and params["sensitivity_run"] is None:
        raise SpecError("method.params.sensitivity_run", "allocation=sensitivity needs the id of a finished "
                        "sensitivity run")
    if not by_sensitivity and params["sensitivity_run"] is not None:
        raise SpecError("method.params.sensitivity_run", "is only used with allocation=sensitivity")
    arch = spec.model.arch if spec is not None else None
    if params["head_ratio"] and arch in models.ARCHS and models.ARCHS[arch].family != "vit":
        raise SpecError("method.params.head_ratio", f"removes attention heads of a vision transformer; {arch} has "
                        "none (set 0)")  # a run's or checkpoint's arch is known only when the job starts


def require_heads(model: nn.Module, head_ratio: float, arch: str) -> dict[str, int]:
    """Each attention's head count (attentions made head-prunable) when heads are to go, else {}."""
    if not head_ratio:
        return {}
    if not heads.attentions(model):
        raise SpecError("method.params.head_ratio", f"removes attention heads of a vision transformer; {arch} "
                        "has none (set 0)")
    initial = heads.make_prunable(model)
    factored = [n for n, a in heads.attentions(model).items()
                if not all(type(p) is nn.Linear for p in (a.q, a.k, a.v, a.out_proj))]
    if factored:
        raise SpecError("method.params.head_ratio", f"{factored[0]}'s projections were factorised (a low-rank or "
                        "factorize run), so its heads cannot be cut whole; remove heads before factorising")
    if all(heads.kept(n, head_ratio) == n for n in initial.values()):
        raise SpecError("method.params.head_ratio", f"{head_ratio:g} of {min(initial.values())} heads rounds "
                        "down to none removed; raise it")
    return initial


def prune_once(model: nn.Module, input_shape, importance, ratio: float, global_ranking: bool,
               round_to: int | None = None, head_plan: tuple[dict[str, int], float, str] | None = None) -> None:
    """Remove ``ratio`` of the channels in one step (what a budget search probes), and the heads of
    ``head_plan`` (initial head counts, share, criterion) if given."""
    if head_plan:
        heads.prune_heads(model, *head_plan)
    surgery.prune_step(surgery.make_pruner(model, input_shape, importance, ratio, global_ranking=global_ranking,
                                           max_ratio=MAX_RATIO, round_to=round_to))


def meet_macs(model: nn.Module, input_shape, prune: Callable[[nn.Module, float], None], hi: float,
              target: float, what: str, where: str = "method.params.target_macs") -> float:
    """The x in [0, hi] for which ``prune(copy, x)`` keeps ``target`` of the MACs (bisection on the
    MACs measured on pruned copies; the model itself is untouched)."""
    base = measure.count_macs(model, input_shape)["macs"]

    def share(x: float) -> float:
        clone = surgery.pruned_copy(model, lambda m: prune(m, x))
        return measure.count_macs(clone, input_shape)["macs"] / base

    x, got = bisect_decreasing(share, 0.0, hi, target)
    if abs(got / target - 1) > MAC_TOLERANCE:
        raise SpecError(where, f"{target:g} of the MACs cannot be met by {what}; the nearest reachable share "
                        f"is {got:.3f}")
    return x


def within_loss(ctx, model: nn.Module, prune: Callable[[nn.Module, float], None], hi: float,
                max_loss: float, what: str) -> float:
    """The largest x in [0, hi] for which ``prune(copy, x)``, before any fine-tuning, keeps the
    validation accuracy within ``max_loss`` of the model's (the base is untouched). Every probe is
    recorded, so the choice can be checked: the ones beyond it lost more than allowed."""
    if not ctx.data.val_held_out:  # judged on training images, a cut would look cheaper than it is
        raise SpecError("data.val_fraction", "max_loss is judged on held-out validation accuracy: "
                                             "set val_fraction > 0")
    base = ctx.evaluate(model)["accuracy"]
    probes: list[list[float]] = []
    cuts: dict[float, bool] = {}                       # x -> the copy lost at least one channel

    def passes(x: float) -> bool:
        if ctx.cancelled():
            raise training.Cancelled()
        clone = surgery.pruned_copy(model, lambda m: prune(m, x))
        cuts[x] = measure.count_params(clone) < measure.count_params(model)
        ctx.recalibrate(clone, "accuracy budget probes")  # judged as the cut model will be, not on stale statistics
        acc = ctx.evaluate(clone)["accuracy"]
        probes.append([x, acc])
        ctx.progress(phase="accuracy budget search", step=len(probes), steps=LOSS_PROBES + 1, amount=x,
                     val_accuracy=acc)
        return base - acc <= max_loss

    x = largest_passing(passes, hi, LOSS_PROBES)
    ctx.extra.update({"budget_base_val_acc": base, "budget_probes": probes})
    if not cuts.get(x):
        smallest = min(probes)
        raise SpecError("method.params.max_loss", f"no {what} removing a channel keeps the validation accuracy "
                        f"within {max_loss:g} of the base's {base:.4f} before fine-tuning (the smallest cut tried, "
                        f"{smallest[0]:.3g}, left {smallest[1]:.4f}); allow a larger max_loss or set a ratio")
    ctx.extra["val_acc_before_finetune"] = next(acc for px, acc in probes if px == x)
    return x


def suggested_ratios(ctx, run_id: str, widths: dict[str, int]) -> dict[str, float]:
    """A finished sensitivity run's per-layer ratios, checked against this model's channel groups
    (``widths``: root layer name -> channels)."""
    where = "method.params.sensitivity_run"
    row = ctx.store.get(run_id)
    if row is None or row["state"] != "done" or not row.get("record"):
        raise SpecError(where, f"run {run_id} is not a finished run in this workspace")
    rec = row["record"]
    if rec.get("method") != "sensitivity":
        raise SpecError(where, f"run {run_id} is a {rec.get('method')} run, not a sensitivity analysis")
    if rec.get("arch") != ctx.arch:
        raise SpecError(where, f"run {run_id} analysed a {rec.get('arch')}, this model is a {ctx.arch}")
    analysed = rec.get("sensitivity_layers") or {}
    out = {}
    for name, r in (rec.get("suggested_ratios") or {}).items():
        n = (analysed.get(name) or {}).get("channels")
        if name not in widths or n != widths[name]:
            have = f"{widths[name]} channels" if name in widths else "no such prunable layer"
            raise SpecError(where, f"run {run_id} analysed {name} with {n} channels but this model has {have}; "
                            "run sensitivity on this model first")
        out[name] = min(float(r), MAX_RATIO)
    if not any(out.values()):
        raise SpecError(where, f"run {run_id} found no layer that can lose channels within its max_loss; "
                        "analyse again with a larger max_loss or smaller ratios")
    return out


def scaled(ratios: dict[str, float], s: float) -> dict[str, float]:
    """Every suggested ratio times one factor, capped at MAX_RATIO: too-sensitive layers (0) stay whole."""
    return {n: min(s * r, MAX_RATIO) for n, r in ratios.items()}


def prune_to_ratios(model: nn.Module, input_shape, importance, ratios: dict[str, float],
                    initial: dict[str, int], done: float, round_to: int | None = None) -> None:
    """Bring every listed group to ``done`` (0..1) of its own ratio: at ``done`` = 1 exactly
    int(ratio * initial channels) are gone, as in the sensitivity analysis that suggested it (with
    ``round_to``, the kept count rounded up to a multiple of it)."""
    groups = {g.root: g for g in surgery.score_groups(model, input_shape, importance)}
    plan = {}
    for name, r in ratios.items():
        cut = int(r * done * initial[name] + 1e-9)
        if cut == 0:  # e.g. a layer the analysis judged too sensitive, which this criterion may not rank
            continue
        if name not in groups:
            raise SpecError("method.params.criterion", f"layer {name} should lose {r:.0%} of its channels but "
                                                       "this criterion cannot rank them; use l1, l2 or taylor")
        keep = surgery.aligned_keep(initial[name] - cut, initial[name], round_to or 1)
        if keep >= len(groups[name].scores):
            continue
        plan[name] = (groups[name].handler, surgery.lowest(groups[name].scores, len(groups[name].scores) - keep))
    surgery.apply_plan(model, input_shape, plan)


def require_bn(model: nn.Module, criterion: str, arch: str) -> None:
    if criterion == "bn_scale" and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        raise SpecError("method.params.criterion", f"bn_scale ranks channels by batch-norm scales but {arch} has "
                        "no batch norm; use l1, l2 or taylor")


@register("prune_structured", family="pruning", params=PARAMS, check=check_params,
          help="Channel pruning that physically removes filters, keeping residual adds, batch norms, depthwise "
               "groups and concatenations consistent with torch-pruning's dependency graph (DepGraph, Fang et al. "
               "2023). The recipe: optional sparse learning (group-norm or growing regularisation), then the cut "
               "ranked by a criterion (group L1/L2, LAMP, BN scale, Taylor), uniform per layer, global, or per "
               "layer as a sensitivity run suggested, in one or several rounds, each followed by batch-norm "
               "recalibration and a recovery fine-tune (its own learning rate and cosine schedule, optionally "
               "distilled from the uncompressed start). Fewer MACs, parameters and real latency; the "
               "classifier's outputs are unchanged.")
def prune_structured(model, ctx, params):
    surgery.check_supported(ctx.arch, "prune_structured", model)
    require_bn(model, params["criterion"], ctx.arch)
    shape, steps, allocation, round_to = ctx.input_shape, params["steps"], params["allocation"], params["round_to"]
    head_ratio, initial_heads = params["head_ratio"], require_heads(model, params["head_ratio"], ctx.arch)
    head_plan = (initial_heads, head_ratio, params["criterion"]) if initial_heads else None
    importance = channel_importance(params["criterion"])
    recover = recovery.Recovery(ctx, params)   # its teacher is the start, taken before anything changes
    if params["sparse_learning"] != "off":
        sparsify(ctx, model, params["sparse_learning"], params["sparse_epochs"], params["sparse_reg"],
                 params["finetune_lr"], params["ratio"])
    if params["criterion"] == "taylor" and (params["target_macs"], params["max_loss"]) != (None, None):
        accumulate_gradients(model, ctx.data, ctx.device, params["grad_batches"])  # searches rank as pruning will

    def budget(prune: Callable[[nn.Module, float], None], hi: float, what: str) -> float | None:
        """The amount (ratio or scale) meeting the job's target_macs or max_loss; None if neither is set."""
        if params["target_macs"] is not None:
            return meet_macs(model, shape, prune, hi, params["target_macs"], what)
        if params["max_loss"] is not None:
            return within_loss(ctx, model, prune, hi, params["max_loss"], what)
        return None

    if allocation == "sensitivity":
        initial = {g.root: len(g.scores) for g in surgery.score_groups(model, shape, channel_importance("l1"))}
        ratios = suggested_ratios(ctx, params["sensitivity_run"], initial)
        top = MAX_RATIO / min(r for r in ratios.values() if r > 0)   # every pruned layer at the cap

        def probe(m: nn.Module, s: float) -> None:
            if head_plan:
                heads.prune_heads(m, *head_plan)
            prune_to_ratios(m, shape, importance, scaled(ratios, s), initial, 1.0, round_to)

        scale = budget(probe, top,
                       "scaling of the suggested ratios (layers judged too sensitive stay whole)")
        if scale is not None:
            ratios = scaled(ratios, scale)
            ctx.extra["sensitivity_scale"] = scale
        ctx.log.info("per-layer ratios from sensitivity run %s: %s", params["sensitivity_run"], ratios)
        ctx.extra["layer_ratios"] = ratios
        ratio = None

        def prune(k: int) -> None:
            prune_to_ratios(model, shape, importance, ratios, initial, (k + 1) / steps, round_to)
    else:
        global_ranking = allocation == "global"
        ratio = budget(lambda m, r: prune_once(m, shape, importance, r, global_ranking, round_to, head_plan),
                       MAX_RATIO, f"{allocation} channel pruning")
        if ratio is None:
            ratio = params["ratio"]
        pruner = surgery.make_pruner(model, shape, importance, ratio, steps, global_ranking, MAX_RATIO, round_to)

        def prune(k: int) -> None:
            surgery.prune_step(pruner)
    for k in range(steps):
        if ctx.cancelled():
            raise training.Cancelled()
        if params["criterion"] == "taylor":
            accumulate_gradients(model, ctx.data, ctx.device, params["grad_batches"])
        if head_plan:
            heads.prune_heads(model, initial_heads, head_ratio * (k + 1) / steps, params["criterion"])
        prune(k)
        model.zero_grad(set_to_none=True)
        ctx.recalibrate(model, f"cut {k + 1}/{steps}")
        ctx.log.info("step %d/%d: %d MACs", k + 1, steps, measure.count_macs(model, shape)["macs"])
        recover(model, phase=f"finetune {k + 1}/{steps}")
    ctx.extra.update(report.against_base(ctx, model))
    ctx.extra.update({"channel_ratio": ratio, "criterion": params["criterion"], "allocation": allocation,
                      "round_to": round_to, "steps": steps})
    if head_plan:
        ctx.extra.update({"head_ratio": head_ratio, "attention_heads": heads.head_counts(model)})
    if allocation == "sensitivity":
        ctx.extra["sensitivity_run"] = params["sensitivity_run"]
    return model
