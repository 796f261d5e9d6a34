"""soft_filter_pruning (He et al. 2018, SFP): zero the lowest-norm filters at every epoch end but
keep training them (they may recover), then remove the filters that are zero at the end."""
from __future__ import annotations

from .. import Param, register
from . import report, surgery
from .criterion import FilterNorm
from .structured import MAX_RATIO

PARAMS = (
    Param("ratio", "float", 0.3, "share of each layer's filters zeroed every epoch and removed at the end",
          low=0, high=MAX_RATIO, low_open=True),
    Param("epochs", "int", 3, "training epochs with soft pruning (at the fine-tuning learning rate)", low=1,
          high=10000),
    Param("finetune_epochs", "int", 1, "fine-tuning epochs after the zeroed filters are removed (the last "
          "zeroing has had no epoch to recover from; SFP's long schedules need none, short ones do)",
          low=0, high=10000),
)


@register("soft_filter_pruning", family="pruning", params=PARAMS,
          help="Soft filter pruning: at each epoch end the lowest-L2 filters of every layer are zeroed but keep "
               "learning; after the last epoch the zeroed filters are removed physically, then fine-tuned.")
def soft_filter_pruning(model, ctx, params):
    surgery.check_supported(ctx.arch, "soft_filter_pruning")
    pruner = surgery.make_pruner(model, ctx.input_shape, FilterNorm(), params["ratio"])
    zeroed: list[int] = []

    def soft_prune(m, epoch: int) -> None:
        pruner.reset()  # select afresh on the current weights: recovered filters may be spared
        zeroed.append(sum(surgery.zero_group(g) for g in surgery.selected_groups(pruner)))

    ctx.finetune(model, params["epochs"], phase="soft_prune", on_epoch_end=soft_prune)
    # Every epoch (hence the kept best one) ended with a zeroing, so the lowest-norm filters now
    # are the zeroed ones: removing them is the hard prune. Check that, and say so in the record.
    pruner.reset()
    removed = were_zero = 0
    for group in surgery.selected_groups(pruner):
        removed += len(group[0].idxs)
        were_zero += int(surgery.zero_channels(group).sum())
        group.prune()
    if params["finetune_epochs"]:
        ctx.finetune(model, params["finetune_epochs"])
    ctx.extra.update(report.against_base(ctx, model))
    ctx.extra.update({"channel_ratio": params["ratio"], "zeroed_per_epoch": zeroed,
                      "removed_were_zero": were_zero / max(1, removed)})
    return model
