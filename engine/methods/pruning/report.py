"""What a pruning run adds to its result record: the base it is compared with, measured the same way."""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from ... import measure
from .surgery import widths


def compute(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    return {"macs": measure.count_macs(model, input_shape)["macs"], "params": measure.count_params(model)}


def against_base(ctx, model: nn.Module, structural: bool = True) -> dict[str, Any]:
    """Base-relative fields: MACs/params before and after, their reduction, the channels removed per
    layer (``structural``). The realised speed-up is the runner's ``paired_speedup``, timed for every method alike."""
    base, shape = ctx.base, ctx.input_shape
    before, after = compute(base, shape), compute(model, shape)
    out: dict[str, Any] = {"base_macs": before["macs"], "base_params": before["params"],
                           "mac_reduction": before["macs"] / max(1, after["macs"]),
                           "param_reduction": before["params"] / max(1, after["params"])}
    if structural:
        w0, w1 = widths(base), widths(model)
        out["layer_widths"] = {n: [w0[n], w1[n]] for n in w0 if n in w1}
        out["pruned_channels"] = sum(w0[n] - w1[n] for n in w0 if n in w1)
        out["channels_kept"] = sum(w1[n] for n in w0 if n in w1) / max(1, sum(w0[n] for n in w0 if n in w1))
    return out
