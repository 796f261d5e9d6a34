"""Auto-compress's latency objective: "latency at batch b in a chosen runtime on this machine".

A trial's model is exported to the chosen runtime (``engine.deploy``: eager PyTorch, ONNX Runtime,
OpenVINO) and timed at batch ``batch`` interleaved with the start in the same runtime
(``measure.paired_speedup``, the engine's one paired timer), so the runtime's own gain is never credited
to compression. ``best`` times every runtime available here and keeps the fastest, per model, as
Compare's "latency, best runtime" does; the start's fastest runtime is chosen once, and every trial is
judged against the start there. An INT8 trial runs in its own INT8 runtime (its format's: ONNX Runtime
or OpenVINO), whatever was chosen: that is the only runtime its model has.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .. import deploy, measure, runtimes

RUNTIMES = ("eager", "onnxruntime", "openvino", "best")


def unavailable(runtime: str) -> str | None:
    """Why ``runtime`` cannot time a model on this machine's CPU (deploy's reason), None where it can."""
    if runtime == "best":
        return None if here() else "no runtime runs on this machine's CPU"
    return deploy.DEPLOYMENTS[runtime].available("cpu")


def here() -> list[str]:
    """The runtimes ``best`` chooses among on this machine."""
    return [r for r in RUNTIMES if r != "best" and deploy.DEPLOYMENTS[r].available("cpu") is None]


class LatencyJudge:
    """Times models at ``batch`` in ``runtime`` against the start (exported there once). ``time(model)``:
    its latency_ms, x faster than the start (``speedup``), the runtime it ran in, and the start's latency."""

    def __init__(self, ctx, runtime: str, batch: int):
        cfg = ctx.spec.measure
        self.shape, self.batch, self.runtime = ctx.input_shape, batch, runtime
        self.runs, self.warmup, self.threads_cfg = cfg.latency_runs, cfg.warmup_runs, cfg.threads
        self.rounds = cfg.paired_rounds or 5
        self.threads = measure.timing_threads(cfg.threads)
        self.folder = Path(tempfile.mkdtemp(prefix="search-latency-", dir=ctx.run_dir))
        self.names = here() if runtime == "best" else [runtime]
        self.log = ctx.log
        start = ctx.base_copy().to("cpu").eval()
        fns = self._predictors(start, "start")
        if not fns:
            raise RuntimeError(f"the start could not run in {runtime}")
        self.start_runtime = next(iter(fns))
        if len(fns) > 1:   # best: the start's fastest runtime, each timed against eager at this batch
            eager = fns.get("eager", start)
            speed = {n: (1.0 if n == "eager" else self._paired(eager, fn)["speedup"]) for n, fn in fns.items()}
            self.start_runtime = max(speed, key=speed.get)
        self.start_fn = fns[self.start_runtime]

    def _predictors(self, model: Any, tag: str) -> dict[str, Callable[[torch.Tensor], Any]]:
        if not isinstance(model, nn.Module):   # an INT8 runtime of its own
            return {f"int8 {getattr(model, 'fmt', 'onnx')}": runtimes.of(model, torch.device("cpu")).timing("cpu")}
        out: dict[str, Callable[[torch.Tensor], Any]] = {}
        for name in self.names:
            folder = self.folder / f"{tag}-{name}"
            folder.mkdir(parents=True, exist_ok=True)
            try:
                out[name] = model if name == "eager" else deploy.predictor_for(name, model, self.shape, folder,
                                                                                self.threads)
            except Exception as e:   # a graph this runtime cannot take: the others still judge it
                self.log.warning("autocompress: %s could not run %s: %s", name, tag, str(e).splitlines()[0][:200])
        return out

    def _paired(self, ref: Callable, cand: Callable) -> dict[str, Any]:
        return measure.paired_speedup(ref, cand, self.shape, torch.device("cpu"), self.runs, self.warmup,
                                      self.threads_cfg, rounds=self.rounds, batch=self.batch)

    def time(self, model: Any, tag: str = "trial") -> dict[str, Any]:
        fns = self._predictors(model, tag)
        if not fns:
            raise RuntimeError(f"no runtime of {', '.join(self.names)} could run this model")
        timed = {n: self._paired(self.start_fn, fn) for n, fn in fns.items()}
        name = max(timed, key=lambda n: timed[n]["speedup"])
        p = timed[name]
        for n in fns:
            shutil.rmtree(self.folder / f"{tag}-{n}", ignore_errors=True)
        return {"latency_ms": p["latency_ms"], "speedup": p["speedup"], "runtime": name,
                "start_latency_ms": p["ref_latency_ms"]}

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
