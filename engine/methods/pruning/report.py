"""What a pruning run adds to its result record: the base it is compared with, measured the same way."""
from __future__ import annotations

import copy
import statistics
from typing import Any

import psutil
import torch
import torch.nn as nn

from ... import measure
from .surgery import widths


def compute(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    return {"macs": measure.count_macs(model, input_shape)["macs"], "params": measure.count_params(model)}


@torch.no_grad()
def paired_latency(models: dict[str, nn.Module], input_shape: tuple[int, ...], cfg, rounds: int = 3) -> dict[str, float]:
    """Median CPU batch-1 latency (ms) of each model, measured in alternating rounds so that the
    load of a shared machine hits all of them alike (a fairer ratio than two separate runs)."""
    cpu = torch.device("cpu")
    copies = {k: copy.deepcopy(m).to(cpu).eval() for k, m in models.items()}
    x = torch.randn((1, *input_shape))
    old = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or psutil.cpu_count(logical=False) or 1)
    times: dict[str, list[float]] = {k: [] for k in copies}
    try:
        for _ in range(rounds):
            for k, m in copies.items():
                times[k] += measure.time_runs(lambda: m(x), max(3, cfg.latency_runs // rounds), cfg.warmup_runs,
                                              cpu, min_seconds=0.1)
    finally:
        torch.set_num_threads(old)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def against_base(ctx, model: nn.Module, structural: bool = True) -> dict[str, Any]:
    """Base-relative fields: MACs/params before and after, their reduction, the channels removed per
    layer (``structural``), and the realised CPU speed-up next to the MAC reduction."""
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
    lat = paired_latency({"base": base, "pruned": model}, shape, ctx.spec.measure)
    out["base_latency_ms"] = lat["base"]
    out["paired_latency_ms"] = lat["pruned"]
    out["latency_speedup"] = lat["base"] / lat["pruned"]
    return out
