"""soft_filter_pruning (He et al. 2018, SFP, IJCAI, arXiv 1808.06866): silence the lowest-norm channels
of every layer before training and again at every epoch end while training goes on (they keep
their gradients and may grow back; each zeroing ranks the *current* norms afresh), then remove the
channels silenced last and re-estimate the batch-norm statistics (optionally fine-tune after).

The paper's settings: the same share in every layer (30 % of the filters of a CIFAR ResNet-56 for
52.6 % fewer FLOPs, -0.24 pt from a pretrained net), L2 norm, a zeroing at every epoch end (their
code's ``epoch_prune`` 1) over the whole training schedule, and the hard cut once training ends.
Here the residual-coupled channels are one group (torch-pruning's dependency graph, as in
structured pruning), ranked by their summed norm and silenced together, so that they can be removed.

Why it fell (-7.57 pt at 2.11x on the Quick tour's base, where structured L1 lost 1.40): He et al.
zero the *filters*. Behind a batch norm that silences nothing during training: BN divides the
filter's output by its batch standard deviation, so the first small update after a zeroing comes
back at full strength (the gradient at variance 0 is even amplified ~1/sqrt(eps)). Every zeroed
channel was a live, freshly re-initialised feature by the epoch's end, and every zeroing a fresh
one-shot cut. On 6,000 Fashion-MNIST images from a 0.8165 base (3 soft epochs, 1 fine-tune):
validation right after the zeroings (BN re-estimated) 0.349, 0.470, 0.180, training itself
degrading (train loss 0.84 -> 1.25 in the third epoch), test 0.675 (-14.2 pt). In a
batch-normalised net the channel's scale is its BN gamma, so by default (``zero`` 'bn_scale') the
zeroing sets the gammas to 0 and keeps the filters: the channel stays silent until its gradient
grows the gamma back, ranked by the gammas' L2 norm. Same run: 0.778, 0.797, 0.795 after the
zeroings, test 0.790 (-2.65 pt; structured L1 at the same MACs with 3 fine-tune epochs: -3.55).
Layers without a batch norm have their filters zeroed. In that run no zeroed channel's gamma grew
back past the next zeroing's threshold (``recovered_per_epoch`` 0, 0, 0; with filters: 12, 55, 26
of 140): over a few epochs the first selection holds, gammas growing back below the others.

The last zeroing also zeroes the filters and the shifts (``surgery.zero_group``), so the removal
changes no output; earlier ones must not, or nothing could grow back through ReLU. Each zeroing
and the removal are followed by re-estimated batch-norm statistics; the removal by a fine-tune only if
``finetune_epochs`` asks (the paper's schedule has none after its last zeroing, and a short one did
better without it: below).

Both the soft phase and the fine-tune run at ``finetune_lr``, by default the start's own training rate
(``engine.recovery_lr``): from the Quick tour's base, 30 % with 3 soft epochs and 1 fine-tune epoch scored
-0.44 pt rewound against -1.53 at a tenth of it (all 10,000 test images, ``python -m bench rewind-ab``).

By default the schedule is He et al.'s: every epoch soft-prunes (``epochs`` 4) and the hard cut ends it,
with no fine-tune after (``finetune_epochs`` 0). From the recipes-cpu base (0.8887), 30 % at 2.11x fewer
MACs, 4 soft epochs + 0 scored 0.8909 (+0.22 pt) against 0.8823 (-0.64) for 3 soft + 1 fine-tune, the same
4 epochs: paired over all 10,000 test images +0.86 pt (95 % CI +0.45 to +1.27). 3 soft + 0 scored 0.8828
(-0.59): the fine-tune epoch after the cut (restarting the cosine schedule at the full rate) added next to
nothing, a fourth soft epoch 0.81 pt. docs/BENCHMARKS.md, Investigations, "2026-12-02: unstructured 90 % and
SFP on the recipes-cpu base".
"""
from __future__ import annotations

from ... import training
from .. import Param, recovery, register
from . import report, surgery
from .criterion import FilterNorm, ScaleNorm
from .structured import MAX_RATIO

PARAMS = (
    Param("ratio", "float", 0.3, "share of each layer's filters zeroed before training and at every epoch end, "
          "and removed at the end", low=0, high=MAX_RATIO, low_open=True),
    Param("zero", "str", "bn_scale", "what a soft zeroing sets to 0: 'bn_scale' (the channel's batch-norm scales, "
          "ranked by their L2 norm; filters without a batch norm as 'filter') or 'filter' (the producing filters, "
          "ranked by L2 norm, as He et al.'s code)", choices=("bn_scale", "filter")),
    Param("epochs", "int", 4, "training epochs with soft pruning (at finetune_lr), a zeroing at each one's end; "
          "the hard cut follows the last", low=1, high=10000),
    # after the removal: He et al. fine-tune nothing (the last epoch already trained the cut shape but for
    # the channels zeroed at its end), and on the recipes-cpu base a fine-tune after the cut, restarting the
    # rate, scored 0.86 pt below the same epochs spent soft-pruning; finetune_lr is the soft phase's rate too
    *recovery.params(epochs=0),
)


@register("soft_filter_pruning", family="pruning", params=PARAMS,
          help="Soft filter pruning (He et al. 2018: the same share of every layer, 30 % of a CIFAR ResNet-56's "
               "filters for 2.11x fewer FLOPs, L2 norm, a zeroing at every epoch end, the hard cut after the last "
               "epoch and no fine-tune after it: the defaults): before training and at each epoch end the "
               "lowest-norm channels of every layer are silenced but keep learning (one may grow back and another "
               "take its place); after the last epoch the channels silenced last are removed (finetune_epochs > 0 "
               "then fine-tunes; on a short schedule that scored 0.86 pt below the same epochs spent soft-pruning). "
               "Behind a batch norm the channel's BN scale is zeroed, not its filter (BN would "
               "restore a zeroed filter to full strength at its first update). Batch-norm statistics are "
               "re-estimated after every zeroing and after the removal.")
def soft_filter_pruning(model, ctx, params):
    surgery.check_supported(ctx.arch, "soft_filter_pruning", model)
    scale_only = params["zero"] == "bn_scale"
    pruner = surgery.make_pruner(model, ctx.input_shape, ScaleNorm() if scale_only else FilterNorm(), params["ratio"])
    data, images = ctx.data, ctx.spec.train.bn_recalibration_images
    zeroed: list[int] = []
    recovered: list[int] = []      # filters zeroed last time that are not among this time's lowest
    recalibrated: list[int] = []
    last: set[tuple[int, int]] = set()

    # The hook may run in DDP ranks too (pickled with the model): it holds the data, never ctx.
    def soft_prune(m, epoch: int) -> None:
        nonlocal last
        pruner.reset()  # select afresh on the current weights: recovered filters may be spared
        now: set[tuple[int, int]] = set()
        count = 0
        for i, g in enumerate(surgery.selected_groups(pruner)):
            now.update((i, int(c)) for c in g[0].root_idxs)
            # gammas (or filters) only, so they can grow back; the last zeroing, which the removal
            # follows, takes filters and shifts too: the last epoch's validation then scores the
            # network the removal leaves
            count += surgery.zero_group(g, shift=epoch == params["epochs"] - 1, scale_only=scale_only)
        zeroed.append(count)
        if epoch >= 0:
            recovered.append(len(last - now))
        last = now
        # the layers after a zeroed filter were fitted to it alive: validation would judge stale statistics
        recalibrated.append(training.recalibrate_bn(m, data, images))

    soft_prune(model.to(ctx.device), -1)  # as He et al.: the first epoch already trains the pruned shape
    # the last epoch, as SFP keeps it: an earlier one was validated with shifts the removal drops
    ctx.finetune(model, params["epochs"], lr=params["finetune_lr"], phase="soft_prune", on_epoch_end=soft_prune,
                 keep_best=False)
    for n in recalibrated:
        ctx.count_recalibration("each zeroing", n)
    # Every epoch (hence the kept best one) ended with a zeroing, so the lowest-norm filters now
    # are the zeroed ones: removing them is the hard prune. Check that, and say so in the record.
    pruner.reset()
    removed = were_zero = 0
    for group in surgery.selected_groups(pruner):
        removed += len(group[0].idxs)
        were_zero += int(surgery.zero_channels(group).sum())
        group.prune()
    ctx.recalibrate(model, "removal")
    recovery.Recovery(ctx, params)(model)
    ctx.extra.update(report.against_base(ctx, model))
    ctx.extra.update({"channel_ratio": params["ratio"], "zeroed_per_epoch": zeroed,
                      "recovered_per_epoch": recovered, "removed_channels": removed, "removed_were_zero": were_zero / max(1, removed)})
    return model
