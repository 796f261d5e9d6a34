"""bench autocompress's closing measurement: every model it compares, in every runtime, timed in ONE interleaved run.

Latencies recorded by different jobs minutes apart are not comparable on a shared machine (the last search's
"fastest runtime" column mixed them). Here the base, every Pareto-front model and every preset's run are loaded
in each CPU runtime that runs here (eager PyTorch, ONNX Runtime, OpenVINO; an INT8 model's ONNX file in each INT8
runtime here, ONNX Runtime and OpenVINO, whatever format made it: ``int8_formats.runner_in``) and timed at batch 1
in rounds that visit every (model, runtime) contender, forward then backward (``bench.int8_formats.interleaved``).
Each model's speed-up is the median of its per-round ratios against the base: in the same runtime (an INT8 model:
the FP32 base in the runtime it runs in), and from the model's fastest runtime against the base's fastest. As in
the search (``search_latency``, ``AGREEMENT_MIN``), an FP32 export whose top-1 disagrees with eager on the agreement
images, or an INT8 file whose top-1 in another runtime disagrees with its own format's runtime (where its accuracy
was measured), is refused and is never a model's fastest.
"""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from engine import deploy, export, int8_cpu, measure
from engine.methods import int8_formats, search_latency

from . import int8_formats as int8_bench
from .runtimes import contenders

RUNTIMES = ("eager", "onnxruntime", "openvino")


def int8_runners(checkpoint: str | Path, threads: int, runtimes: list[str]) -> tuple[dict[str, Callable], str,
                                                                                      dict[str, str]]:
    """An INT8 run's ONNX file loaded in each of ``runtimes`` that runs INT8 ONNX ({runtime: predictor}), its home
    runtime (its format's, where its accuracy was measured; always loaded) and why the others did not load."""
    bundle = export.read_bundle(checkpoint)
    fmt = bundle.get("extra", {}).get("int8_format", "qdq")
    if fmt == "openvino" and not int8_cpu.openvino_available():
        fmt = "qdq_s8s8"   # NNCF's QDQ file runs in ONNX Runtime too
    raw, home = bundle["onnx"].numpy().tobytes(), int8_formats.home(fmt)
    out, missing = {home: int8_formats.runner_in(home, raw, threads)}, {}
    for rt in runtimes:
        if rt in int8_formats.INT8_RUNTIMES and rt != home:
            try:
                out[rt] = int8_formats.runner_in(rt, raw, threads)
            except Exception as e:   # said in the block; its home runtime still times it
                missing[rt] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return out, home, missing


def is_int8(checkpoint: str | Path) -> bool:
    return export.read_bundle(checkpoint).get("kind") == export.ONNX_INT8


def ratios(timed: dict, ref: tuple[str, str], key: tuple[str, str]) -> float:
    """Median over rounds of ref's latency / key's: how many times faster ``key`` is, paired round by round."""
    return statistics.median(b / m for b, m in zip(timed[ref], timed[key]))


def retime(checkpoints: dict[str, str], base: str, shape: tuple[int, ...], images: torch.Tensor, threads: int,
           rounds: int = 7, runs: int = 40, extra: dict[str, torch.nn.Module] | None = None) -> dict[str, Any]:
    """``checkpoints``: {label: checkpoint path}, ``base`` one of the labels; ``extra``: {label: FP32 module} timed
    alongside (no checkpoint: e.g. a probe of the runtime's per-call floor). Per label: each runtime's median
    latency and paired x faster than the base in the same runtime, its fastest runtime and its x faster there
    than the base in the base's fastest; FP32 runtimes refused for disagreeing with eager, with why."""
    int8 = {k: p for k, p in checkpoints.items() if is_int8(p)}
    models = {k: export.load_model(p)[0].to("cpu").eval() for k, p in checkpoints.items() if k not in int8}
    models.update({k: m.to("cpu").eval() for k, m in (extra or {}).items()})
    out: dict[str, Any] = {"models": {}, "missing": {}, "rounds": rounds, "threads": threads}
    with tempfile.TemporaryDirectory() as tmp:
        fns, missing = contenders(models, shape, Path(tmp), threads,
                                  [r for r in RUNTIMES if deploy.DEPLOYMENTS[r].available("cpu") is None])
        out["missing"].update(missing)
        refused: dict[str, dict[str, str]] = {}
        with measure.cpu_threads(torch.device("cpu"), threads):
            for (label, rt), fn in list(fns.items()):
                if rt == "eager":
                    continue
                agree = search_latency.top1_agreement(models[label], fn, images)
                if agree < search_latency.AGREEMENT_MIN:
                    refused.setdefault(label, {})[rt] = (f"top-1 agreed with eager on {agree:.1%} of {len(images)} "
                                                         f"images, under {search_latency.AGREEMENT_MIN:.0%}")
                    del fns[(label, rt)]
        here = [r for r in RUNTIMES if deploy.DEPLOYMENTS[r].available("cpu") is None]
        engine_of: dict[tuple[str, str], str] = {}   # (INT8 label, its key's runtime) -> the FP32 runtime it pairs with
        for label, path in int8.items():
            loaded, home, failed = int8_runners(path, threads, here)
            out["missing"].update({f"{rt}/{label}": why for rt, why in failed.items()})
            with measure.cpu_threads(torch.device("cpu"), threads):
                for rt, fn in loaded.items():
                    if rt != home:
                        agree = search_latency.top1_agreement(loaded[home], fn, images)
                        if agree < search_latency.AGREEMENT_MIN:
                            refused.setdefault(label, {})[f"int8 {rt}"] = (
                                f"top-1 agreed with its own runtime ({home}) on {agree:.1%} of {len(images)} images, "
                                f"under {search_latency.AGREEMENT_MIN:.0%}")
                            continue
                    fns[(label, f"int8 {rt}")] = fn
                    engine_of[(label, f"int8 {rt}")] = rt
        timed = int8_bench.interleaved(fns, shape, rounds, runs, threads)
    fastest_base = min((k for k in timed if k[0] == base), key=lambda k: statistics.median(timed[k]))
    out.update(base_fastest=fastest_base[1], base_latency_ms=statistics.median(timed[fastest_base]) * 1e3)
    for label in [*checkpoints, *(extra or {})]:
        mine = {k: v for k, v in timed.items() if k[0] == label}
        if not mine:
            continue
        per = {}
        for (_, rt), lat in mine.items():
            same = engine_of.get((label, rt), rt)   # an INT8 model: the base in the runtime it runs in
            per[rt] = {"latency_ms": statistics.median(lat) * 1e3, "vs": same,
                       "x_faster": ratios(timed, (base, same), (label, rt)) if (base, same) in timed else None}
        best = min(mine, key=lambda k: statistics.median(timed[k]))
        out["models"][label] = {"runtimes": per, "fastest": best[1],
                                "x_faster_same": per[best[1]]["x_faster"],
                                "x_faster_vs_base_fastest": ratios(timed, fastest_base, best),
                                "refused": refused.get(label, {})}
    return out
