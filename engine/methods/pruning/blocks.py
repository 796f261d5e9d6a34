"""prune_blocks: remove whole residual blocks (layer pruning), so the net is genuinely shallower.

A residual block whose shortcut is the identity (no downsampling projection: same input and output
shape) computes ``x + f(x)``; without it the net computes ``x``, so it can be dropped whole and the
rest still fits (Veit et al., "Residual Networks Behave Like Ensembles of Relatively Shallow Networks",
NeurIPS 2016, arXiv 1605.06431: their lesion study finds the paths of a trained ResNet do not strongly
depend on each other, so single blocks can be deleted at test time). Fewer layers cut latency at batch 1
where channel pruning cannot: on a small net each layer's call cost, not its arithmetic, dominates
(Elkerdawy et al., "To Filter Prune, or to Layer Prune, That Is The Question", ACCV 2020, arXiv
2007.05667: layer pruning reaches higher latency reduction than filter pruning at similar accuracy; Chen &
Zhao, "Shallowing Deep Networks: Layer-wise Pruning based on Feature Representations", TPAMI 41(12) 2019,
doi 10.1109/TPAMI.2018.2874634, who fine-tune the shallower net distilled from the original, as
``finetune_kd`` does).

Blocks are ranked by what removing them costs on a few hundred held-out validation images, each probe
with its batch-norm statistics re-estimated as the cut model will have them:
- ``greedy``: remove the least harmful block, probe the remaining ones again on the net without it,
  repeat (k removals cost n + (n-1) + ... probes);
- ``oneshot``: each block removed alone once (Veit et al.'s experiment), the k least harmful go;
- ``uniform``: no probes, the last removable block of the stage that has most of them left, in turn,
  so a CIFAR ResNet-20 less 3 or 6 blocks has the layout of a ResNet-14 or ResNet-8.
Ties go to the earlier block in network order, so the choice is deterministic. The removed blocks are
dropped from their ``nn.Sequential`` stage (elsewhere replaced by ``nn.Identity``): the saved bundle
rebuilds the shallower net and exports to ONNX. The recovery fine-tune is the shared one
(``recovery``), as ``prune_structured``'s.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.nn as nn
from torchvision.models import resnet as tv_resnet

from ... import cifar_nets, measure, models, training
from ...spec import SpecError
from .. import Param, recovery, register
from . import report

# Residual blocks whose ``downsample`` is the shortcut (None: the identity).
BLOCK_TYPES = (cifar_nets.BasicBlock, tv_resnet.BasicBlock, tv_resnet.Bottleneck)
FAMILIES = ("cifar_resnet", "resnet")
CRITERIA = ("greedy", "oneshot", "uniform")

PARAMS = (
    Param("blocks", "int", 1, "how many residual blocks with an identity shortcut to remove; ignored when "
          "target_macs is set", low=1, high=10000),
    Param("target_macs", "float", None, "instead of blocks: share of the base MACs to keep, e.g. 0.5; blocks "
          "are removed in the criterion's order and the count whose MACs come nearest to it is kept (whole "
          "blocks: the record's macs_kept says what was reached)", low=0, high=1, low_open=True,
          high_open=True, optional=True),
    Param("criterion", "str", "greedy", "which blocks go. greedy: the one whose removal costs least "
          "validation accuracy (batch-norm statistics re-estimated), then again on the net without it; "
          "oneshot: each block removed alone once (Veit et al. 2016), the least harmful go; uniform: no "
          "probes, the last block of the stage with most blocks left, in turn (ResNet-20 less 3 blocks has "
          "ResNet-14's layout)", choices=CRITERIA),
    Param("probe_images", "int", 512, "held-out validation images each probe is scored on (greedy, oneshot)",
          low=10, high=1_000_000),
    *recovery.params(epochs=1),
)


def check_params(params: dict, spec: Any) -> None:
    arch = spec.model.arch if spec is not None else None
    if arch in models.ARCHS and models.ARCHS[arch].family not in FAMILIES:
        raise SpecError("model.arch", f"prune_blocks removes residual blocks with an identity shortcut; {arch} has "
                        f"none (supported: {', '.join(a for a, s in models.ARCHS.items() if s.family in FAMILIES)})")


def removable(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Names (network order) of the residual blocks whose shortcut is the identity and whose output has
    their input's shape (checked on a forward pass), i.e. the blocks the net can do without."""
    candidates = {n: m for n, m in model.named_modules()
                  if isinstance(m, BLOCK_TYPES) and getattr(m, "downsample", None) is None}
    if not candidates:
        return []
    shapes: dict[str, tuple[torch.Size, torch.Size]] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: shapes.__setitem__(n, (inp[0].shape, out.shape)))
             for n, m in candidates.items()]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return [n for n in candidates if n in shapes and shapes[n][0] == shapes[n][1]]


def without(model: nn.Module, names: list[str] | set[str]) -> nn.Module:
    """A copy of ``model`` without the blocks ``names`` (names as in ``model``): dropped from their
    ``nn.Sequential`` stage (a stage may end up empty, which passes its input through), elsewhere
    replaced by ``nn.Identity``."""
    out = copy.deepcopy(model)
    by_parent: dict[str, set[str]] = {}
    for n in names:
        parent, _, leaf = n.rpartition(".")
        by_parent.setdefault(parent, set()).add(leaf)
    for parent_name, leaves in by_parent.items():
        parent = out.get_submodule(parent_name) if parent_name else out
        if isinstance(parent, nn.Sequential):
            kept = [m for leaf, m in parent.named_children() if leaf not in leaves]
            rebuilt = nn.Sequential(*kept)
            grand, _, leaf = parent_name.rpartition(".")
            holder = out.get_submodule(grand) if grand else out
            if isinstance(holder, nn.Sequential):
                holder[int(leaf)] = rebuilt
            else:
                setattr(holder, leaf, rebuilt)
        else:
            for leaf in leaves:
                setattr(parent, leaf, nn.Identity())
    return out


def uniform_order(model: nn.Module, names: list[str]) -> list[str]:
    """Removal order of ``uniform``: repeatedly the last removable block of the stage with most blocks
    left (counting those that cannot go; the earlier stage on a tie)."""
    stages: dict[str, list[str]] = {}
    for n in names:
        stages.setdefault(n.rpartition(".")[0], []).append(n)
    size = {s: sum(isinstance(m, BLOCK_TYPES) for m in model.get_submodule(s).children()) if s else len(stages[s])
            for s in stages}
    order = []
    while any(stages.values()):
        stage = max((s for s in stages if stages[s]), key=lambda s: size[s])  # max keeps the earlier on a tie
        order.append(stages[stage].pop())
        size[stage] -= 1
    return order


def nearest_count(shares: list[float], target: float) -> int:
    """How many removals (1..len) leave the MAC share nearest ``target`` (``shares[k-1]``: after k); the
    fewer blocks on a tie."""
    return min(range(1, len(shares) + 1), key=lambda k: (abs(shares[k - 1] - target), k))


class Prober:
    """Scores nets without some blocks: batch norms re-estimated, accuracy on the first ``images``
    validation images; every probe is kept for the record."""

    def __init__(self, ctx, model: nn.Module, images: int):
        self.ctx, self.model, self.images = ctx, model, images
        self.count = 0

    def accuracy(self, net: nn.Module) -> float:
        ctx = self.ctx
        loader = ctx.data.loader("val", ctx.device, limit=self.images)
        logits, y = training.predict(net.to(ctx.device), loader, ctx.device, ctx.cancelled)
        return float((logits.argmax(1) == y).float().mean())

    def __call__(self, removed: list[str], candidate: str) -> float:
        if self.ctx.cancelled():
            raise training.Cancelled()
        net = without(self.model, [*removed, candidate])
        self.ctx.recalibrate(net, "block probes")
        self.count += 1
        acc = self.accuracy(net)
        self.ctx.progress(phase="block probes", step=self.count, block=candidate, val_accuracy=acc)
        self.ctx.log.info("probe %d: without %s -> val acc %.4f", self.count, ", ".join([*removed, candidate]), acc)
        return acc


def _first_enough(order: list[str], enough: Callable[[list[str]], bool]) -> list[str]:
    """The shortest head of ``order`` that is ``enough`` (all of it if none is), asking in order of length."""
    k = next(i for i in range(1, len(order) + 1) if enough(order[:i]) or i == len(order))
    return order[:k]


def removal_order(model: nn.Module, names: list[str], criterion: str, probe: Prober,
                  enough: Callable[[list[str]], bool]) -> tuple[list[str], list[dict[str, Any]]]:
    """Blocks in the order ``criterion`` removes them, until ``enough(removed)``; and the probes
    (per removal step: each candidate's validation accuracy without it)."""
    if criterion == "uniform":
        return _first_enough(uniform_order(model, names), enough), []
    steps: list[dict[str, Any]] = []
    if criterion == "oneshot":
        accs = {n: probe([], n) for n in names}
        ranked = _first_enough(sorted(names, key=lambda n: -accs[n]), enough)   # stable: network order on a tie
        return ranked, [{"removed": ranked, "val_accuracy": accs}]
    removed: list[str] = []
    left = list(names)
    while left:
        accs = {n: probe(removed, n) for n in left}
        best = max(left, key=lambda n: accs[n])             # max keeps the earliest on a tie
        removed.append(best)
        left.remove(best)
        steps.append({"removed": best, "val_accuracy": accs})
        if enough(removed):
            break
    return removed, steps


@register("prune_blocks", family="pruning", params=PARAMS, check=check_params,
          help="Layer pruning: removes whole residual blocks with an identity shortcut (CIFAR ResNets, torchvision "
               "ResNets), so the net is shallower: fewer layers, fewer MACs and parameters, and lower latency at "
               "batch 1 where per-layer call cost dominates (Veit et al. 2016; Elkerdawy et al. 2020). Blocks are "
               "ranked greedily by the validation accuracy lost without them (batch norms re-estimated), once "
               "each, or uniformly per stage; then batch-norm recalibration and the shared recovery fine-tune "
               "(its own learning rate and cosine schedule, optionally distilled from the uncompressed start).")
def prune_blocks(model, ctx, params):
    shape, criterion = ctx.input_shape, params["criterion"]
    names = removable(model, shape)
    if not names:
        raise SpecError("model", f"prune_blocks removes residual blocks with an identity shortcut (no downsampling "
                        f"projection); {ctx.arch} has none")
    if params["target_macs"] is None and params["blocks"] > len(names):
        raise SpecError("method.params.blocks", f"{ctx.arch} has {len(names)} removable blocks "
                        f"({', '.join(names)}); cannot remove {params['blocks']}")
    if criterion != "uniform" and not ctx.data.val_held_out:
        raise SpecError("data.val_fraction", f"criterion {criterion} ranks blocks by held-out validation accuracy: "
                        "set val_fraction > 0, or use criterion uniform")
    recover = recovery.Recovery(ctx, params)   # its teacher is the start, taken before anything changes
    base_macs = measure.count_macs(model, shape)["macs"]
    shares: list[float] = []

    def share(removed: list[str]) -> float:
        return measure.count_macs(without(model, removed), shape)["macs"] / base_macs

    def enough(removed: list[str]) -> bool:
        if params["target_macs"] is None:
            return len(removed) >= params["blocks"]
        shares.append(share(removed))
        return shares[-1] <= params["target_macs"]

    probe = Prober(ctx, model, params["probe_images"])
    base_val = probe.accuracy(model) if criterion != "uniform" else None
    removed, steps = removal_order(model, names, criterion, probe, enough)
    if params["target_macs"] is not None:   # shares[k - 1]: after the first k removals, k = 1 .. len(removed)
        removed = removed[:nearest_count(shares, params["target_macs"])]
    model = without(model, removed)
    macs_kept = measure.count_macs(model, shape)["macs"] / base_macs
    ctx.log.info("removed %d of %d removable blocks (%s): %.3f of the MACs kept", len(removed), len(names),
                 ", ".join(removed), macs_kept)
    ctx.recalibrate(model, "block removal")
    ctx.extra.update({"criterion": criterion, "removable_blocks": names, "removed_blocks": removed,
                      "residual_blocks": [sum(isinstance(m, BLOCK_TYPES) for m in ctx.base.modules())
                                          if ctx.base is not None else None,
                                          sum(isinstance(m, BLOCK_TYPES) for m in model.modules())],
                      "macs_kept": macs_kept, "block_probes": steps, "probe_images": params["probe_images"]})
    if base_val is not None:
        ctx.extra.update({"probe_base_val_acc": base_val, "val_acc_before_finetune": probe.accuracy(model)})
    if params["target_macs"] is not None:
        ctx.extra["target_macs"] = params["target_macs"]
    recover(model, phase="finetune")
    ctx.extra.update(report.against_base(ctx, model, structural=False))
    return model
