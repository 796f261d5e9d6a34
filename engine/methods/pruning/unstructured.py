"""prune_unstructured: magnitude pruning of individual weights, masks made permanent: in prune ->
fine-tune rounds (Han et al. 2015), or gradually during one fine-tune on Zhu & Gupta's cubic schedule
(``gradual``).

Every conv and linear weight is prunable, the first conv and the classifier included, so the
measured sparsity (``engine.measure.sparsity``, over exactly those tensors) equals the request.
Both are tiny (under 0.1 % of ResNet-18's weights); in ``global`` scope the ranking decides how much
of them goes, and ``layer_sparsity`` in the record shows what each layer kept.

The fine-tune (either schedule) runs at ``finetune_lr``, by default the start's own training rate
(``engine.recovery_lr``): from the Quick tour's base (0.8857), 90 % gradual over 3 epochs scored -2.08 pt
rewound against -6.60 at a tenth of it, on all 10,000 test images (``python -m bench rewind-ab``).
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn
from torch.nn.utils import prune

from ... import measure, training
from ...spec import SpecError
from .. import Param, recovery, register
from . import report
from .criterion import WEIGHT_NORMS, weight_scales
from .gradual import GradualPruner, update_steps
from .schedule import cumulative_amounts

PARAMS = (
    Param("amount", "float", 0.5, "share of all conv/linear weights set to zero", low=0, high=1,
          low_open=True, high_open=True),
    Param("norm", "str", "l1", "l1 or l2: single weights rank by |w| either way; in global scope each layer's "
          "scores are divided by its mean |w| (l1) or RMS (l2) so layers of different scale compete fairly",
          choices=WEIGHT_NORMS),
    Param("scope", "str", "global", "global: one ranking over all layers; layer: every layer pruned by amount",
          choices=("global", "layer")),
    Param("schedule", "str", "rounds", "rounds: prune -> fine-tune rounds (Han et al. 2015); gradual: Zhu & Gupta "
          "2017, sparsity rising from 0 to amount on a cubic schedule during finetune_epochs of training, masks "
          "updated every prune_interval steps until prune_end of the steps, then training at the final sparsity",
          choices=("rounds", "gradual")),
    Param("steps", "int", 1, "rounds: prune -> fine-tune rounds; each removes the same share of the surviving "
          "weights (about 10 % per round is the usual advice for high sparsity)", low=1, high=100),
    # the recovery settings every cutting method has (finetune_lr, distillation-assisted fine-tune);
    # finetune_epochs means one thing per schedule
    *(replace(p, help="rounds: recovery epochs after each round (masks held fixed); gradual: the epochs of "
                      "training during which the sparsity rises, and recovers") if p.name == "finetune_epochs" else p
      for p in recovery.params(epochs=1)),
    Param("prune_interval", "int", 10, "gradual: optimiser steps between mask updates (Zhu & Gupta's dt)",
          low=1, high=100000),
    Param("prune_end", "float", 0.75, "gradual: share of the training steps by which the target sparsity is "
          "reached; the rest train at it", low=0.0, high=1.0, low_open=True),
)


def _check(params: dict, spec) -> None:
    if params["schedule"] == "gradual":
        if params["finetune_epochs"] < 1:
            raise SpecError("method.params.finetune_epochs", "the gradual schedule prunes while it trains: "
                                                             "finetune_epochs must be >= 1")
        if params["steps"] != 1:
            raise SpecError("method.params.steps", "steps counts prune -> fine-tune rounds (schedule rounds); "
                                                   "the gradual schedule sets prune_interval instead")


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def apply_masks(layers: list[nn.Module], amount: float, scope: str, scales: list[torch.Tensor]) -> None:
    """Mask the lowest-scored weights so that ``amount`` of them are zero. Earlier masks are baked
    in first: their zeros score lowest, so each round only adds to the previous one. ``scales``
    (global scope) are the layers' scales before the first round: taken again after a round, the
    zeros would shift them and the allocation would depend on the number of rounds."""
    for m in layers:
        if prune.is_pruned(m):
            prune.remove(m, "weight")
    if scope == "layer":
        for m in layers:
            prune.l1_unstructured(m, "weight", amount=amount)
        return
    prune.global_unstructured([(m, "weight") for m in layers], pruning_method=prune.L1Unstructured,
                              importance_scores={(m, "weight"): m.weight.detach().abs() / s
                                                 for m, s in zip(layers, scales)}, amount=amount)


@register("prune_unstructured", family="pruning", params=PARAMS, check=_check,
          help="Magnitude pruning of individual weights, in prune -> fine-tune rounds (Han et al. 2015), or "
               "gradually while it fine-tunes (schedule gradual: Zhu & Gupta 2017's cubic schedule from 0 to "
               "amount, masks updated every prune_interval steps until prune_end of the training). "
               "The network keeps its shape: the gain is size on disk (zeros are stored packed) and sparse "
               "MACs, not dense-kernel speed.")
def prune_unstructured(model, ctx, params):
    named = prunable_layers(model)
    layers = [m for _, m in named]
    scales = weight_scales([m.weight for m in layers], params["norm"])
    if params["schedule"] == "gradual":
        amounts = gradual(model, ctx, params, [n for n, _ in named], scales)
    else:
        amounts = in_rounds(model, ctx, params, layers, scales)
    macs = measure.count_macs(model, ctx.input_shape)
    ctx.extra.update(report.against_base(ctx, model, structural=False))
    ctx.extra.update({
        "target_sparsity": params["amount"],
        "achieved_sparsity": measure.sparsity(model),
        "sparsity_schedule": amounts,
        "sparse_mac_reduction": ctx.extra["base_macs"] / max(1, macs["sparse_macs"]),
        "layer_sparsity": {n: float((m.weight == 0).float().mean()) for n, m in named},
    })
    return model


def gradual(model: nn.Module, ctx, params: dict, names: list[str], scales: list[torch.Tensor]) -> list[float]:
    """One fine-tune during which the sparsity rises on Zhu & Gupta's schedule; the sparsity set at each
    mask update."""
    epochs = params["finetune_epochs"]
    steps = update_steps(epochs * len(ctx.data.loader("train")), params["prune_end"], params["prune_interval"])
    pruner = GradualPruner(names, params["amount"], params["scope"], [s.detach().cpu() for s in scales], steps)
    # the last epoch: an earlier one had not reached the target sparsity
    recovery.Recovery(ctx, params)(model, "gradual pruning", after_step=pruner, keep_best=False)
    ctx.recalibrate(model, "gradual pruning")
    ctx.log.info("gradual pruning: %d mask updates, %.1f%% of weights zero", len(pruner.schedule),
                 100 * measure.sparsity(model))
    return pruner.schedule


def in_rounds(model: nn.Module, ctx, params: dict, layers: list[nn.Module], scales: list[torch.Tensor]) -> list[float]:
    """Prune -> fine-tune rounds, each removing the same share of the surviving weights."""
    amounts = cumulative_amounts(params["amount"], params["steps"])
    recover = recovery.Recovery(ctx, params)   # its teacher (finetune_kd) is the start, before any mask
    for k, amount in enumerate(amounts):
        if ctx.cancelled():
            raise training.Cancelled()
        apply_masks(layers, amount, params["scope"], scales)
        ctx.recalibrate(model, f"round {k + 1}/{len(amounts)}")
        ctx.log.info("round %d/%d: %.1f%% of weights masked", k + 1, len(amounts), 100 * measure.sparsity(model))
        recover(model, f"finetune {k + 1}/{len(amounts)}")
    for m in layers:
        prune.remove(m, "weight")
    return amounts
