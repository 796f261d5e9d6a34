"""prune_unstructured: magnitude pruning of individual weights, iteratively, masks made permanent.

Every conv and linear weight is prunable, the first conv and the classifier included, so the
measured sparsity (``engine.measure.sparsity``, over exactly those tensors) equals the request.
Both are tiny (under 0.1 % of ResNet-18's weights); in ``global`` scope the ranking decides how much
of them goes, and ``layer_sparsity`` in the record shows what each layer kept.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils import prune

from ... import measure, training
from .. import Param, register
from . import report
from .criterion import WEIGHT_NORMS, weight_scales
from .schedule import cumulative_amounts

PARAMS = (
    Param("amount", "float", 0.5, "share of all conv/linear weights set to zero", low=0, high=1,
          low_open=True, high_open=True),
    Param("norm", "str", "l1", "l1 or l2: single weights rank by |w| either way; in global scope each layer's "
          "scores are divided by its mean |w| (l1) or RMS (l2) so layers of different scale compete fairly",
          choices=WEIGHT_NORMS),
    Param("scope", "str", "global", "global: one ranking over all layers; layer: every layer pruned by amount",
          choices=("global", "layer")),
    Param("steps", "int", 1, "prune -> fine-tune rounds; each removes the same share of the surviving weights "
          "(about 10 % per round is the usual advice for high sparsity)", low=1, high=100),
    Param("finetune_epochs", "int", 1, "recovery epochs after each round (masks held fixed)", low=0, high=1000),
)


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


@register("prune_unstructured", family="pruning", params=PARAMS,
          help="Magnitude pruning of individual weights (Han et al. 2015) in prune -> fine-tune rounds. "
               "The network keeps its shape: the gain is size on disk (zeros are stored packed) and sparse "
               "MACs, not dense-kernel speed.")
def prune_unstructured(model, ctx, params):
    named = prunable_layers(model)
    layers = [m for _, m in named]
    amounts = cumulative_amounts(params["amount"], params["steps"])
    scales = weight_scales([m.weight for m in layers], params["norm"])
    for k, amount in enumerate(amounts):
        if ctx.cancelled():
            raise training.Cancelled()
        apply_masks(layers, amount, params["scope"], scales)
        ctx.recalibrate(model, f"round {k + 1}/{len(amounts)}")
        ctx.log.info("round %d/%d: %.1f%% of weights masked", k + 1, len(amounts), 100 * measure.sparsity(model))
        ctx.finetune(model, params["finetune_epochs"], phase=f"finetune {k + 1}/{len(amounts)}")
    for m in layers:
        prune.remove(m, "weight")
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
