"""The same weights under several runtimes: eager PyTorch, torch.compile, ONNX Runtime.

No weight changes. Each back-end's latency/throughput goes to ``ctx.extra["runtimes"]``, with its
speed-up over eager timed interleaved with it (``x_vs_eager``); one that cannot run here is
recorded as ``{"skipped": reason}``. ``torch.compile`` runs in a child process
with a time limit, so a slow or crashing compiler costs at most ``compile_timeout_s`` and cannot
take the run down with it.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from .. import export, measure, onnx_models
from . import Param, register

ROOT = Path(__file__).resolve().parents[2]

_COMPILE_CHILD = """
import json, sys, time, torch
from engine import export, measure
model, _ = export.load_model(sys.argv[1], trust_code=True)  # a run of this workspace
cfg = json.loads(sys.argv[2])
dev = torch.device(cfg["device"])
model = model.to(dev).eval()
# Inductor writes the thread count into its CPU kernels when it compiles them: set it first, as eager
# is timed with, or the compiled model runs on another number of threads than the one it is compared with
torch.set_num_threads(measure.timing_threads(cfg["threads"]))
if cfg["freezing"] and dev.type == "cpu":   # weights folded in as constants: Inductor's fast CPU inference path
    import torch._inductor.config as inductor
    inductor.freezing = True
compiled = torch.compile(model, mode=cfg["mode"])
x = torch.randn((1, *cfg["shape"]), device=dev)
t0 = time.perf_counter()
with torch.no_grad():
    compiled(x)
    xb = torch.randn((cfg["batch"], *cfg["shape"]), device=dev)
    compiled(xb)
compile_s = time.perf_counter() - t0
# activations=False: counting tensors op by op would time and count the eager graph, not the compiled one
out = measure.measure_speed(compiled, tuple(cfg["shape"]), dev, cfg["batch"], cfg["runs"], cfg["warmup"],
                            cfg["threads"], activations=False)
out["compile_seconds"] = compile_s
out["paired"] = measure.paired_speedup(model, compiled, tuple(cfg["shape"]), dev, cfg["runs"], cfg["warmup"],
                                       cfg["threads"], rounds=cfg["rounds"])
print("RESULT " + json.dumps(out))
"""


def _speed_keys(m: dict[str, Any], paired: dict[str, Any] | None = None) -> dict[str, Any]:
    """The speed figures kept per back-end; ``paired`` (vs eager, timed interleaved) as x_vs_eager."""
    keep = ("latency_ms", "latency_p90_ms", "throughput", "throughput_batch", "threads", "activation_peak_bytes",
            "peak_mem_bytes")
    out = {k: m[k] for k in keep if k in m}
    if paired:
        out.update(x_vs_eager=paired["speedup"], x_vs_eager_range=[paired["speedup_min"], paired["speedup_max"]])
    return out


def compiled_speed(bundle_path: Path, device: str, shape, cfg, params) -> dict[str, Any]:
    args = {"device": device, "mode": params["compile_mode"], "shape": list(shape),
            "batch": cfg.batch_size if device == "cpu" else cfg.gpu_batch_size, "runs": cfg.latency_runs,
            "warmup": cfg.warmup_runs, "threads": cfg.threads, "rounds": cfg.paired_rounds or 5,
            "freezing": bool(params.get("freezing"))}
    try:
        p = subprocess.run([sys.executable, "-c", _COMPILE_CHILD, str(bundle_path), json.dumps(args)], cwd=ROOT,
                           capture_output=True, text=True, timeout=params["compile_timeout_s"])
    except subprocess.TimeoutExpired:
        return {"skipped": f"torch.compile did not finish within compile_timeout_s={params['compile_timeout_s']}s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        err = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
        return {"skipped": f"torch.compile failed: {(err[-1] if err else f'exit code {p.returncode}')[:300]}"}
    out = json.loads(lines[-1][len("RESULT "):])
    return {**_speed_keys(out, out["paired"]), "compile_seconds": out["compile_seconds"],
            "freezing": args["freezing"] and device == "cpu"}


def onnx_speed(onnx_bytes: bytes, device: str, shape, cfg, eager) -> dict[str, Any]:
    import onnxruntime as ort
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"skipped": "this onnxruntime build has no CUDAExecutionProvider (install onnxruntime-gpu)"}
    runner = export.OnnxRunner(onnx_bytes, device=device, threads=measure.timing_threads(cfg.threads))
    if device == "cuda" and runner.session.get_providers()[0] != "CUDAExecutionProvider":
        return {"skipped": "ONNX Runtime could not start its CUDA provider here"}
    # The runner takes and returns CPU tensors, so CUDA timings include the host<->device copies.
    batch = cfg.batch_size if device == "cpu" else cfg.gpu_batch_size
    speed = measure.measure_speed(runner, shape, torch.device("cpu"), batch, cfg.latency_runs, cfg.warmup_runs,
                                  cfg.threads)
    paired = measure.paired_speedup(eager.to("cpu"), runner, shape, torch.device("cpu"), cfg.latency_runs, cfg.warmup_runs,
                                    cfg.threads, rounds=cfg.paired_rounds or 5) if device == "cpu" and eager else None
    out = _speed_keys(speed, paired)
    if device == "cuda":  # said in the record: eager CUDA is timed on inputs already on the GPU
        out["includes_host_copies"] = True
    return out


@register("runtime", family="runtime", params=[
    Param("compile", "bool", True, "also measure torch.compile (in a child process)"),
    Param("compile_mode", "str", "default", "torch.compile mode",
          choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")),
    Param("freezing", "bool", True, "on the CPU, compile with freezing (weights folded in as constants): 1.5x "
          "faster than eager at batch 1 where default compile was slower"),
    Param("compile_timeout_s", "int", 300, "give up on torch.compile after this many seconds", low=10, high=3600),
    Param("onnx", "bool", True, "also measure ONNX Runtime"),
], help="No weight change: measure the model under eager PyTorch, torch.compile and ONNX Runtime (CPU, and "
        "CUDA when present), to show when a compiler or runtime helps.")
def runtime(model, ctx, params):
    if isinstance(model, onnx_models.OnnxModel):
        return _onnx_runtimes(model, ctx, params)
    model = model.to("cpu").eval()
    shape = ctx.input_shape
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=ctx.run_dir) as tmp:
        bundle_path, onnx_path = Path(tmp) / "model.pt", Path(tmp) / "model.onnx"
        export.save_bundle(export.make_bundle(model, arch=ctx.arch, num_classes=ctx.data.num_classes,
                                              small_input=ctx.small_input, meta=ctx.data.meta()), bundle_path)
        onnx_bytes, onnx_error = None, None
        if params["onnx"]:
            try:
                export.export_onnx(model, shape, onnx_path)
                onnx_bytes = onnx_path.read_bytes()
            except Exception as e:
                onnx_error = f"ONNX export failed: {str(e).splitlines()[0][:300]}"
        # as the runner's measure phase: concurrent jobs of the workspace time one at a time
        with measure.timing_lock(getattr(ctx.store, "root", None)):
            results.update(_time_runtimes(model, ctx, params, devices, bundle_path, onnx_bytes, onnx_error))
        if "cuda" not in devices:
            for name in ("eager_cuda", "compile_cuda", "onnxruntime_cuda"):
                results[name] = {"skipped": "no CUDA device on this machine"}
    model.to("cpu")
    ran = {k: v for k, v in results.items() if "latency_ms" in v}
    ctx.extra["runtimes"] = results
    if ran:
        ctx.extra["fastest_runtime"] = min(ran, key=lambda k: ran[k]["latency_ms"])
    return model


def _time_runtimes(model, ctx, params, devices, bundle_path, onnx_bytes, onnx_error) -> dict[str, Any]:
    """Each back-end's speed on each device (eager, torch.compile, ONNX Runtime)."""
    cfg, shape = ctx.spec.measure, ctx.input_shape
    results: dict[str, Any] = {}
    for dev in devices:
        if ctx.cancelled():
            break
        ctx.progress(phase=f"runtime:eager_{dev}")
        m = model.to(dev)
        batch = cfg.batch_size if dev == "cpu" else cfg.gpu_batch_size
        results[f"eager_{dev}"] = _speed_keys(measure.measure_speed(
            m, shape, torch.device(dev), batch, cfg.latency_runs, cfg.warmup_runs, cfg.threads))
        ctx.progress(phase=f"runtime:compile_{dev}")
        results[f"compile_{dev}"] = compiled_speed(bundle_path, dev, shape, cfg, params) if params["compile"] \
            else {"skipped": "compile=false"}
        ctx.progress(phase=f"runtime:onnxruntime_{dev}")
        if not params["onnx"]:
            results[f"onnxruntime_{dev}"] = {"skipped": "onnx=false"}
        elif onnx_bytes is None:
            results[f"onnxruntime_{dev}"] = {"skipped": onnx_error}
        else:
            results[f"onnxruntime_{dev}"] = onnx_speed(onnx_bytes, dev, shape, cfg, model)
    return results


def _onnx_runtimes(model: onnx_models.OnnxModel, ctx, params) -> onnx_models.OnnxModel:
    """A user's ONNX model under ONNX Runtime, CPU and CUDA where present; it has no PyTorch graph to run
    eagerly or compile, and the record says so."""
    cfg, shape = ctx.spec.measure, ctx.input_shape
    none = {"skipped": "an ONNX model has no PyTorch graph to run eagerly or compile"}
    results: dict[str, Any] = {}
    for dev in ("cpu", "cuda"):
        results[f"eager_{dev}"] = results[f"compile_{dev}"] = none
        if dev == "cuda" and not torch.cuda.is_available():
            results["onnxruntime_cuda"] = {"skipped": "no CUDA device on this machine"}
        elif not params["onnx"]:
            results[f"onnxruntime_{dev}"] = {"skipped": "onnx=false"}
        else:
            ctx.progress(phase=f"runtime:onnxruntime_{dev}")
            results[f"onnxruntime_{dev}"] = onnx_speed(model.onnx_bytes, dev, shape, cfg, None)
    ran = {k: v for k, v in results.items() if "latency_ms" in v}
    ctx.extra["runtimes"] = results
    if ran:
        ctx.extra["fastest_runtime"] = min(ran, key=lambda k: ran[k]["latency_ms"])
    return model
