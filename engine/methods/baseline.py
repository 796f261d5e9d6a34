"""The reference point every compression is compared with."""
from __future__ import annotations

from . import register


@register("baseline", family="baseline", needs_base=False,
          help="Train the chosen architecture on the dataset (or fine-tune a given model) for train.epochs; "
               "the reference that every compressed model is compared with.")
def baseline(model, ctx, params):
    ctx.fit(model, phase="train")
    return model
