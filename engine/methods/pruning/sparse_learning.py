"""Sparse learning before a structured cut (DepGraph's "+SL"): train for a few epochs with a
regulariser that drives whole channel groups towards zero, so the cut then removes channels that
already carry little. Both regularisers are torch-pruning's, applied to the gradients between the
backward pass and the optimiser step:

- ``group_norm``: DepGraph (Fang et al. 2023, CVPR), ``GroupNormPruner``: every coupled group's
  weights decay in proportion to reg x alpha^(how unimportant the channel is), alpha = 2^4, by the
  group L2 norm that DepGraph ranks with;
- ``growing_reg``: GReg (Wang et al. 2021, ICLR), ``GrowingRegPruner``: an L2 penalty on the
  channels the criterion ranks lowest, its coefficient growing by ``reg`` every 10 steps
  (the paper's K_u = 10), so the unimportant channels are squeezed out gradually.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp

from . import surgery

SPARSE_MODES = ("off", "group_norm", "growing_reg")
GROW_EVERY = 10        # GReg's K_u: steps between increments of the growing penalty


def regularising_pruner(model: nn.Module, input_shape, mode: str, reg: float) -> tp.pruner.BasePruner:
    """The torch-pruning pruner whose ``regularize`` implements ``mode`` (it never cuts here, so its
    ratio is not used: both regularisers act on every channel, scaled by its rank)."""
    kw = dict(ignored_layers=surgery.protected(model), root_module_types=list(surgery.ROOT_TYPES))
    example = surgery.example_input(model, input_shape)
    importance = tp.importance.GroupMagnitudeImportance(p=2)   # the group L2 norm both papers rank by
    if mode == "group_norm":
        return tp.pruner.GroupNormPruner(model, example, importance, reg=reg, **kw)
    if mode == "growing_reg":
        return tp.pruner.GrowingRegPruner(model, example, importance, reg=reg, delta_reg=reg, **kw)
    raise ValueError(f"unknown sparse-learning mode {mode!r}")


def sparsify(ctx, model: nn.Module, mode: str, epochs: int, reg: float, lr: float | None, ratio: float) -> None:
    """Train ``model`` ``epochs`` epochs with the ``mode`` regulariser (at ``lr``, default the fine-tune
    rate); records the share of the group norms that a cut of ``ratio`` would remove, before and after."""
    model.to(ctx.device)
    pruner = regularising_pruner(model, ctx.input_shape, mode, reg)
    steps = 0

    # The hooks may run in DDP ranks too (pickled with the model and the pruner): they hold no ctx.
    def after_backward(m: nn.Module) -> None:
        nonlocal steps
        if mode == "growing_reg" and steps and steps % GROW_EVERY == 0:
            pruner.update_reg()
        pruner.regularize(m)
        if mode == "growing_reg":
            growing_reg_batchnorms(pruner)
        steps += 1

    before = weak_share(model, ctx.input_shape, ratio)
    ctx.finetune(model, epochs, lr=lr, phase="sparse learning", after_backward=after_backward)
    after = weak_share(model, ctx.input_shape, ratio)
    ctx.extra.update({"sparse_learning": mode, "sparse_epochs": epochs, "sparse_reg": reg,
                      "weak_channel_norm_share_before": before, "weak_channel_norm_share_after": after})
    ctx.log.info("sparse learning (%s, %d epochs): the weakest %.0f %% of channels carry %.4f of the squared "
                 "group norms, was %.4f", mode, epochs, 100 * ratio, after, before)


@torch.no_grad()
def growing_reg_batchnorms(pruner: tp.pruner.GrowingRegPruner) -> None:
    """The batch-norm half of GReg's penalty. torch-pruning 1.6's ``GrowingRegPruner.regularize`` adds it
    with ``grad.data[idxs].add_(...)``, which indexes a list of channels and so adds to a copy: the
    scales were never penalised, and a BN-dominated group norm hardly fell (measured in the test's
    setting, an untrained ResNet-20, reg 0.5, 25 steps: the weakest half's share 0.484 -> 0.482 without
    this, -> 0.318 with it). Same term, added in place."""
    for group in pruner._groups:
        gamma = pruner.group_reg[group]
        for k, (dep, idxs) in enumerate(group):
            bn = dep.target.module
            if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.affine and bn.weight.grad is not None \
                    and bn not in pruner.ignored_layers:
                g = torch.index_select(gamma, 0, torch.tensor(group[k].root_idxs)).to(bn.weight.device)
                at = torch.tensor(idxs, device=bn.weight.device)
                bn.weight.grad.index_add_(0, at, g * bn.weight.detach()[at])


def weak_share(model: nn.Module, input_shape, ratio: float) -> float:
    """Share of the summed squared group norms carried by each group's ``ratio`` weakest channels: what
    a uniform cut of that ratio would remove (sparse learning should make it fall)."""
    weak = total = 0.0
    for g in surgery.score_groups(model, input_shape, tp.importance.GroupMagnitudeImportance(p=2,
                                                                                              normalizer=None)):
        s = g.scores.sort().values
        weak += float(s[:int(ratio * len(s))].sum())
        total += float(s.sum())
    return weak / max(total, 1e-12)
