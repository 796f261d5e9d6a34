"""The reference point every compression is compared with."""
from __future__ import annotations

import torch.nn as nn

from . import register


@register("baseline", family="baseline", needs_base=False,
          help="Train the chosen architecture on the dataset (or fine-tune a given model) for train.epochs; "
               "the reference that every compressed model is compared with.")
def baseline(model, ctx, params):
    if not isinstance(model, nn.Module):  # a user's ONNX model (train.epochs 0): scored and measured as given
        return model
    ctx.fit(model, phase="train")
    return model
