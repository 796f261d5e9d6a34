"""Thread and batch sweeps of a finished run: latency at 1..N threads, throughput at several batches.

Users deploy on other core counts than the machine that measured the run, and a model that scales
badly with threads (or whose throughput saturates at a small batch) shows it only on such curves.
``sweep_run`` times the run's own artefact in one deployment runtime (``engine.deploy``) and keeps
the curves in the run folder (``sweep.json``), with the load each point was timed under.
"""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any, Callable

import torch

from . import conditions, deploy, export, layout, measure
from .spec import SpecError
from .store import Store

BATCHES = (1, 8, 32, 128)
MAX_POINTS = 64


def default_threads(cpus: int | None = None) -> list[int]:
    """1, 2, 4, ... up to the machine's CPUs, and the CPU count itself."""
    n = cpus or os.cpu_count() or 1
    out, t = [], 1
    while t < n:
        out.append(t)
        t *= 2
    return [*out, n]


def _checked(values: list[int] | tuple[int, ...], field: str, high: int) -> list[int]:
    vals = sorted({int(v) for v in values})
    if not vals or len(vals) > MAX_POINTS or vals[0] < 1 or vals[-1] > high:
        raise SpecError(field, f"give 1 to {MAX_POINTS} whole numbers between 1 and {high}, got {list(values)}")
    return vals


@torch.no_grad()
def sweep(load: Callable[[int], Callable[[torch.Tensor], Any]], input_shape: tuple[int, ...], threads: list[int],
          batches: list[int], runs: int = 20, warmup: int = 3) -> dict[str, Any]:
    """``load(threads)``: a predictor using that many CPU threads. Latency (batch 1, median of ``runs``)
    at each thread count; throughput at each batch on the most threads."""
    cpu = torch.device("cpu")
    by_threads = []
    for t in threads:
        fn = load(t)
        point: dict[str, Any] = {"threads": t}
        with measure.cpu_threads(cpu, t), conditions.probe(t, point):
            x = torch.randn((1, *input_shape))
            lat = measure.time_runs(lambda: fn(x), runs, warmup, cpu, min_seconds=0.3)
        point["latency_ms"] = statistics.median(lat) * 1e3
        by_threads.append(point)
    by_batch = []
    most = max(threads)
    fn = load(most)
    for b in batches:
        point = {"batch": b, "threads": most}
        with measure.cpu_threads(cpu, most), conditions.probe(most, point):
            xb = torch.randn((b, *input_shape))
            tb = measure.time_runs(lambda: fn(xb), max(3, runs // 4), 1, cpu)
        point["throughput"] = b / statistics.median(tb)
        by_batch.append(point)
    return {"by_threads": by_threads, "by_batch": by_batch}


def sweep_run(store: Store, run_id: str, runtime: str | None = None, threads: list[int] | None = None,
              batches: list[int] | None = None, runs: int = 20) -> dict[str, Any]:
    """Sweep a finished run in ``runtime`` (default: its best download runtime, else eager) and write
    ``sweep.json`` to its folder; returns what was written."""
    row = store.get(run_id)
    if row is None or row["state"] != "done":
        raise SpecError("run", f"no finished run {run_id!r}")
    rec = row.get("record") or {}
    runtime = runtime or rec.get("best_artefact_runtime") or "eager"
    if runtime not in deploy.DEPLOYMENTS or deploy.DEPLOYMENTS[runtime].in_child:
        raise SpecError("runtime", f"unknown or unsweepable runtime {runtime!r}; valid: "
                                   + ", ".join(n for n, d in deploy.DEPLOYMENTS.items() if not d.in_child))
    dep = deploy.DEPLOYMENTS[runtime]
    if why := dep.available("cpu"):
        raise SpecError("runtime", why)
    if not 1 <= runs <= 10000:
        raise SpecError("runs", f"must be between 1 and 10000, got {runs}")
    threads = _checked(threads or default_threads(), "threads", 512)
    batches = _checked(batches or list(BATCHES), "batches", 65536)
    run_dir = store.run_dir(run_id)
    try:
        model, bundle = export.load_model(run_dir / layout.CHECKPOINT)
    except export.BundleError as e:
        raise SpecError("run", f"run {run_id} has no FP32 PyTorch model to sweep: {e}") from None
    shape = tuple(rec.get("input_size") or bundle.get("meta", {}).get("input_size") or ())
    if len(shape) != 3:
        raise SpecError("run", f"run {run_id} records no input size")
    artefact = _artefact(dep, model, shape, run_dir, rec)
    out = {"run_id": run_id, "runtime": runtime, "cpu_model": measure.cpu_model(), "cpus": os.cpu_count(),
           **sweep(lambda t: dep.load(artefact, model, "cpu", t), shape, threads, batches, runs)}
    export.atomic_write_bytes(run_dir / layout.SWEEP, json.dumps(out, indent=2).encode())
    return out


def _artefact(dep: deploy.Deployment, model, shape, run_dir: Path, rec: dict[str, Any]) -> Path | None:
    """The run's artefact for ``dep`` (made now, beside the others, where the run has none yet)."""
    if dep.artefact is None or dep.name == "eager":
        return None
    have = run_dir / dep.artefact
    if have.is_file():
        return have
    onnx = run_dir / layout.ONNX
    if dep.from_onnx and not onnx.is_file():
        export.export_onnx(model, shape, onnx)
    return dep.export(model, shape, run_dir, onnx)


def load(store: Store, run_id: str) -> dict[str, Any] | None:
    """The run's last sweep, None where it has none."""
    path = store.run_dir(run_id) / layout.SWEEP
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
