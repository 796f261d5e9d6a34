"""prune_unstructured: magnitude pruning of individual weights, masks made permanent: in prune ->
fine-tune rounds (Han et al. 2015), or gradually during one fine-tune on Zhu & Gupta's cubic schedule
(``gradual``).

By default (``keep_dense`` ``ends``) the stem conv (the first layer the input meets) and the classifier
stay dense, the common practice of the sparse-training literature (Gale et al. 2019 and Evci et al. 2020,
RigL, keep the first conv dense; the classifier maps straight to the classes): every pixel and every class
goes through one of them, and they are tiny (0.06 % of a CIFAR ResNet-18's weights, 0.4 % of a CIFAR
ResNet-20's). The other conv/linear layers are pruned correspondingly harder, so that ``amount`` is still
the share of *all* conv/linear weights that is zero and the measured sparsity (``engine.measure.sparsity``,
over exactly those tensors) equals the request. ``keep_dense`` ``none`` makes every layer prunable; in
``global`` scope the ranking then decides how much of the ends goes. ``layer_sparsity`` in the record shows
what each layer kept. Measured on the recipes-cpu row (90 % gradual, 3 epochs, base 0.8887): ends -1.80 pt,
none -2.07 pt, a +0.27 pt difference within noise (docs/BENCHMARKS.md, Investigations, 2026-12-02).

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
    Param("keep_dense", "str", "ends", "ends: the stem conv (the first layer the input meets) and the classifier "
          "stay dense, as is common practice (Gale et al. 2019; Evci et al. 2020, RigL), and the other layers are "
          "pruned harder so that amount is still the share of all conv/linear weights set to zero; none: every "
          "conv/linear layer is prunable", choices=("ends", "none")),
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
    """Every conv/linear layer: the tensors ``engine.measure.sparsity`` counts."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@torch.no_grad()
def end_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Names of the first and the last conv/linear layer a forward pass of one blank image calls: the stem
    and the classifier (found by running the net, not by the order its modules were defined in)."""
    calls: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, i, o, name=n: calls.append(name)) for n, m in prunable_layers(model)]
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()   # the running statistics of batch norm must not see the blank image
        model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not calls:
        raise SpecError("method.params.keep_dense", "the model ran no conv or linear layer: nothing to keep dense")
    return list(dict.fromkeys([calls[0], calls[-1]]))


def split_dense(model: nn.Module, input_shape: tuple[int, ...], params: dict) -> tuple[list[tuple[str, nn.Module]],
                                                                                      list[str], float]:
    """(the layers to prune, the names kept dense, the sparsity within the pruned layers that makes
    ``params["amount"]`` of all conv/linear weights zero)."""
    named = prunable_layers(model)
    dense = end_layers(model, input_shape) if params["keep_dense"] == "ends" else []
    pruned = [(n, m) for n, m in named if n not in dense]
    total = sum(m.weight.numel() for _, m in named)
    share = sum(m.weight.numel() for _, m in pruned) / total if total else 0.0
    within = params["amount"] / share if share else 1.0
    if within >= 1.0:
        raise SpecError("method.params.keep_dense", f"keeping {', '.join(dense)} dense leaves {share:.1%} of the "
                        f"conv/linear weights to prune, too few to zero {params['amount']:.1%} of them: lower "
                        "amount or set keep_dense to none")
    return pruned, dense, within


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
    pruned, dense, within = split_dense(model, ctx.input_shape, params)
    if dense:
        ctx.log.info("keeping %s dense: the other layers are pruned to %.2f%% so that %.1f%% of all conv/linear "
                     "weights are zero", ", ".join(dense), 100 * within, 100 * params["amount"])
    layers = [m for _, m in pruned]
    scales = weight_scales([m.weight for m in layers], params["norm"])
    if params["schedule"] == "gradual":
        within_amounts = gradual(model, ctx, params, [n for n, _ in pruned], scales, within)
    else:
        within_amounts = in_rounds(model, ctx, params, layers, scales, within)
    # the sparsity of all conv/linear weights at each update (the pruned layers' share of them is amount / within)
    amounts = [a * params["amount"] / within for a in within_amounts]
    macs = measure.count_macs(model, ctx.input_shape)
    ctx.extra.update(report.against_base(ctx, model, structural=False))
    ctx.extra.update({
        "target_sparsity": params["amount"],
        "achieved_sparsity": measure.sparsity(model),
        "sparsity_schedule": amounts,
        "sparse_mac_reduction": ctx.extra["base_macs"] / max(1, macs["sparse_macs"]),
        "layer_sparsity": {n: float((m.weight == 0).float().mean()) for n, m in named},
        "dense_layers": dense,
    })
    return model


def gradual(model: nn.Module, ctx, params: dict, names: list[str], scales: list[torch.Tensor],
            amount: float) -> list[float]:
    """One fine-tune during which the sparsity of the layers ``names`` rises on Zhu & Gupta's schedule to
    ``amount``; the sparsity set at each mask update."""
    epochs = params["finetune_epochs"]
    steps = update_steps(epochs * len(ctx.data.loader("train")), params["prune_end"], params["prune_interval"])
    pruner = GradualPruner(names, amount, params["scope"], [s.detach().cpu() for s in scales], steps)
    # the last epoch: an earlier one had not reached the target sparsity
    recovery.Recovery(ctx, params)(model, "gradual pruning", after_step=pruner, keep_best=False)
    ctx.recalibrate(model, "gradual pruning")
    ctx.log.info("gradual pruning: %d mask updates, %.1f%% of weights zero", len(pruner.schedule),
                 100 * measure.sparsity(model))
    return pruner.schedule


def in_rounds(model: nn.Module, ctx, params: dict, layers: list[nn.Module], scales: list[torch.Tensor],
              amount: float) -> list[float]:
    """Prune -> fine-tune rounds of ``layers`` to ``amount``, each removing the same share of the surviving
    weights."""
    amounts = cumulative_amounts(amount, params["steps"])
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
