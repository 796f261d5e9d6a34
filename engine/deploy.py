"""Where a finished FP32 model is deployed: one registry of runtimes, each exporting, loading and
running it, so every run is timed (and shipped) in the fastest one this machine has.

The same weights ran 3.0x faster at batch 1 in ONNX Runtime than in PyTorch eager on a 2-core CPU,
and a 50 %-pruned model realised 0.96 of its MAC cut there against 0.61 in eager: judging a
compressed model in eager alone undersells it. Each ``Deployment`` says whether it runs here
(``available``: None, or why not: "not available on this machine" is a record, never an error),
writes its artefact (``export``), and turns that artefact into a predictor (``load``: batch tensor
-> logits tensor, left on the device it ran on). ``deploy_all`` then checks every artefact against PyTorch on test
images (top-1 agreement, ≥ ``AGREEMENT_TARGET`` to count as verified) and times it. A runtime
plugs in by adding a class to ``DEPLOYMENTS``.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from . import export, measure

Predictor = Callable[[torch.Tensor], torch.Tensor]
AGREEMENT_TARGET = 0.995      # FP32 artefacts: the same top-1 as PyTorch on ≥ 99.5 % of test images
NOT_HERE = "not available on this machine"
ROOT = Path(__file__).resolve().parents[1]


class Deployment:
    """One runtime. ``artefact``: the file it ships in the run folder (None: nothing to download);
    ``from_onnx``: its artefact is made from the run's ONNX file; ``in_child``: it is timed in a
    child process under a time limit (``torch.compile``), not through ``load``."""
    name = ""
    label = ""
    artefact: str | None = None
    from_onnx = False
    in_child = False
    devices: tuple[str, ...] = ("cpu",)

    def available(self, device: str) -> str | None:
        return None if device in self.devices else f"{NOT_HERE}: {self.label} does not run on {device}"

    def export(self, model: nn.Module, input_shape: tuple[int, ...], folder: Path, onnx_path: Path | None) -> Path | None:
        return None

    def load(self, artefact: Path | None, model: nn.Module, device: str, threads: int) -> Predictor:
        raise NotImplementedError


class Eager(Deployment):
    name, label, artefact, devices = "eager", "PyTorch eager", "model.pt", ("cpu", "cuda")

    def available(self, device: str) -> str | None:
        if device == "cuda" and not torch.cuda.is_available():
            return f"{NOT_HERE}: no CUDA device"
        return super().available(device)

    def load(self, artefact, model, device, threads):
        model = model.to(device).eval()   # its threads: those of the timing around it (measure.cpu_threads)

        @torch.no_grad()
        def run(x: torch.Tensor) -> torch.Tensor:   # logits stay where they were computed, as in eager timing
            return model(x.to(device)).float()
        return run


class OnnxRuntime(Deployment):
    name, label, artefact, from_onnx, devices = "onnxruntime", "ONNX Runtime", "model.onnx", True, ("cpu", "cuda")

    def available(self, device: str) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return f"{NOT_HERE}: onnxruntime is not installed"
        if device == "cuda" and ("CUDAExecutionProvider" not in ort.get_available_providers()
                                 or not torch.cuda.is_available()):
            return f"{NOT_HERE}: no CUDA device, or this onnxruntime build has no CUDA provider (onnxruntime-gpu)"
        return super().available(device)

    def export(self, model, input_shape, folder, onnx_path):
        return onnx_path

    def load(self, artefact, model, device, threads):
        if device == "cuda":
            return CudaIoBinding(artefact.read_bytes())
        return export.OnnxRunner(artefact.read_bytes(), threads=threads)


class CudaIoBinding:
    """ONNX Runtime on CUDA with I/O binding: input and output stay on the GPU, so the host copies a
    plain ``session.run`` makes are not timed (eager CUDA is timed on inputs already there)."""

    def __init__(self, onnx_bytes: bytes):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(onnx_bytes, opts, providers=["CUDAExecutionProvider",
                                                                        "CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.classes: int | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import numpy as np
        x = x.detach().to("cuda", torch.float32).contiguous()
        if self.classes is None:   # the output width, read once from a plain run
            self.classes = int(self.session.run(None, {self.input_name: x[:1].cpu().numpy()})[0].shape[1])
        out = torch.empty((x.shape[0], self.classes), device="cuda", dtype=torch.float32)
        io = self.session.io_binding()
        io.bind_input(self.input_name, "cuda", x.device.index or 0, np.float32, tuple(x.shape), x.data_ptr())
        io.bind_output(self.output_name, "cuda", out.device.index or 0, np.float32, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream().synchronize()   # ORT reads x on its own stream: x must be written first
        self.session.run_with_iobinding(io)
        return out


class OpenVino(Deployment):
    """OpenVINO's CPU plugin, FP32 (the precision hint is set: on CPUs with bf16 units its default
    would silently run bf16). Shipped as OpenVINO IR: model.xml and its weights, model.bin."""
    name, label, artefact, from_onnx = "openvino", "OpenVINO", "model.xml", True

    def available(self, device: str) -> str | None:
        try:
            import openvino as ov
        except ImportError:
            return f"{NOT_HERE}: the openvino package is not installed"
        if device != "cpu":
            return super().available(device)
        if "CPU" not in ov.Core().available_devices:
            return f"{NOT_HERE}: OpenVINO has no CPU plugin for {platform.machine()}"
        return None

    def export(self, model, input_shape, folder, onnx_path):
        import openvino as ov
        xml = folder / self.artefact
        ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
        return xml

    def load(self, artefact, model, device, threads):
        import openvino as ov
        compiled = ov.Core().compile_model(str(artefact), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                                 "INFERENCE_PRECISION_HINT": "f32",
                                                                 "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()

        def run(x: torch.Tensor) -> torch.Tensor:
            request.infer({0: x.detach().to("cpu", torch.float32).contiguous().numpy()})
            return torch.from_numpy(request.get_output_tensor(0).data.copy())
        return run


class Compiled(Deployment):
    """``torch.compile`` with ``freezing`` (weights folded in as constants) on the CPU: 1.5x faster
    than eager at batch 1 where default compile was slower. Compiling takes minutes, so it runs only
    when the spec asks (``measure.compile``), in a child process under ``measure.compile_timeout_s``."""
    name, label, in_child = "compile", "torch.compile (freezing)", True

    def available(self, device: str) -> str | None:
        return super().available(device)


DEPLOYMENTS: dict[str, Deployment] = {d.name: d for d in (Eager(), OnnxRuntime(), OpenVino(), Compiled())}


def key(name: str, device: str) -> str:
    """A runtime's key in the record's ``deploy``: its name on the CPU, ``<name>_cuda`` on the GPU."""
    return name if device == "cpu" else f"{name}_{device}"


@torch.no_grad()
def reference_logits(model: nn.Module | Predictor, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """``model``'s float logits for ``images`` on the CPU, in batches and without autograd (PyTorch's reference
    and each runtime's answers alike): one forward over a thousand images with its graph kept grew a CIFAR
    ResNet-18 job by ~4.6 GB. ``images`` may be held in float16 (the runner's verification set); each batch
    is fed as float32."""
    if not len(images):
        return torch.empty(0)
    return torch.cat([model(images[i:i + batch].float()).float().cpu() for i in range(0, len(images), batch)])


def agreement(reference: torch.Tensor, predictor: Predictor, images: torch.Tensor, batch: int = 64) -> dict[str, Any]:
    """Top-1 agreement and the largest |logit difference| of ``predictor`` against PyTorch's logits."""
    got = reference_logits(predictor, images, batch)
    agree = (got.argmax(1) == reference.argmax(1)).float().mean().item()
    return {"agreement": agree, "verified_images": len(images), "verified": agree >= AGREEMENT_TARGET,
            "max_abs_diff": (got - reference).abs().max().item()}


_COMPILE_CHILD = """
import json, sys, time, torch
import torch._inductor.config as inductor
from engine import deploy, export, measure
model, _ = export.load_model(sys.argv[1])
cfg = json.loads(sys.argv[2])
images, reference = torch.load(sys.argv[3])
model = model.eval()
threads = measure.timing_threads(cfg["threads"])
torch.set_num_threads(threads)   # Inductor writes the thread count into its kernels when it compiles them
inductor.freezing = True
compiled = torch.compile(model)
t0 = time.perf_counter()
with torch.no_grad():
    compiled(torch.randn((1, *cfg["shape"])))
    compiled(torch.randn((cfg["batch"], *cfg["shape"])))
compile_s = time.perf_counter() - t0
out = measure.measure_speed(compiled, tuple(cfg["shape"]), torch.device("cpu"), cfg["batch"], cfg["runs"],
                            cfg["warmup"], cfg["threads"], activations=False)
out.update(deploy.agreement(reference, lambda x: compiled(x), images))
out["compile_seconds"] = compile_s
print("RESULT " + json.dumps(out))
"""


def compiled_in_child(bundle_path: Path, images: torch.Tensor, reference: torch.Tensor, shape, cfg) -> dict[str, Any]:
    """``Compiled``'s figures from a child process; {"not_available": why} when it fails or times out."""
    args = {"shape": list(shape), "batch": cfg.batch_size, "runs": cfg.latency_runs, "warmup": cfg.warmup_runs,
            "threads": cfg.threads}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "images.pt"
        torch.save((images, reference), data)
        try:
            p = subprocess.run([sys.executable, "-c", _COMPILE_CHILD, str(bundle_path), json.dumps(args), str(data)],
                               cwd=ROOT, capture_output=True, text=True, timeout=cfg.compile_timeout_s)
        except subprocess.TimeoutExpired:
            return {"not_available": f"torch.compile did not finish within measure.compile_timeout_s="
                                     f"{cfg.compile_timeout_s}s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        err = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
        return {"not_available": f"torch.compile failed: {(err[-1] if err else f'exit code {p.returncode}')[:300]}"}
    return json.loads(lines[-1][len("RESULT "):])


TIMING = ("latency_ms", "latency_p90_ms", "latency_cv", "throughput", "throughput_batch", "threads", "load_avg",
          "cpu_share", "others_cpu", "loaded", "energy_mj_per_image", "energy_source")
KEPT = (*TIMING, "agreement", "verified_images", "verified", "max_abs_diff", "compile_seconds")


@dataclass
class Plan:
    """What ``deploy_all`` deploys: the model, its input, where artefacts go, the test images it is
    verified on, and the measure settings (``measure.*`` of the spec)."""
    model: nn.Module
    input_shape: tuple[int, ...]
    folder: Path
    images: torch.Tensor
    cfg: Any
    bundle_path: Path | None = None
    onnx_path: Path | None = None
    devices: tuple[str, ...] = ("cpu",)


def deploy_all(plan: Plan, eager_cpu: dict[str, Any] | None = None,
               log: Callable[[str], None] = lambda msg: None) -> dict[str, dict[str, Any]]:
    """Every runtime's entry for ``plan.model``: its figures (``KEPT``) and ``artefact`` path, or
    ``{"not_available": why}``. ``eager_cpu``: the eager CPU timing the run already took (not taken
    twice). ONNX-based runtimes need ``plan.onnx_path`` (the run's model.onnx)."""
    cfg, model = plan.cfg, plan.model.to("cpu").eval()
    threads = measure.timing_threads(cfg.threads)
    reference = reference_logits(model, plan.images)
    out: dict[str, dict[str, Any]] = {}
    for dep in DEPLOYMENTS.values():
        for device in plan.devices if dep.name != "compile" else ("cpu",):
            k = key(dep.name, device)
            why = dep.available(device)
            if dep.in_child and not cfg.compile:
                why = "not run: measure.compile is off (compiling takes minutes)"
            elif dep.from_onnx and why is None and plan.onnx_path is None:
                why = "not run: no ONNX export of this run (measure.onnx is off, or the export failed)"
            if why is not None:
                out[k] = {"not_available": why}
                continue
            try:
                out[k] = _one(dep, device, plan, threads, reference, eager_cpu)
            except Exception as e:   # a graph this runtime cannot take: recorded, the run still counts
                msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                out[k] = {"not_available": f"{dep.label} could not run this model: {msg}"}
                log(f"{dep.label} on {device}: {msg}")
            model.to("cpu")
    return out


def _one(dep: Deployment, device: str, plan: Plan, threads: int, reference: torch.Tensor,
         eager_cpu: dict[str, Any] | None) -> dict[str, Any]:
    cfg = plan.cfg
    if dep.in_child:
        res = compiled_in_child(plan.bundle_path, plan.images, reference, plan.input_shape, cfg)
        return {k: res[k] for k in (*KEPT, "not_available") if k in res}
    t0 = time.perf_counter()
    artefact = dep.export(plan.model, plan.input_shape, plan.folder, plan.onnx_path)
    export_s = time.perf_counter() - t0
    predictor = dep.load(artefact, plan.model, device, threads)
    res: dict[str, Any] = agreement(reference, predictor, plan.images) if len(plan.images) else {}
    if dep.name == "eager" and device == "cpu" and eager_cpu is not None:
        speed = eager_cpu   # the run's own eager timing: the same model, timed moments ago
    else:
        batch = cfg.batch_size if device == "cpu" else cfg.gpu_batch_size
        # inputs made on the device timed, and synchronised there: no host copy is counted on CUDA
        speed = measure.measure_speed(predictor, plan.input_shape, torch.device(device), batch,
                                      cfg.latency_runs, cfg.warmup_runs, threads, activations=False)
    res.update({k: speed[k] for k in TIMING if k in speed})
    res["threads"] = threads if device == "cpu" else None
    if artefact is not None and dep.name != "eager":
        res["artefact"] = str(artefact)
        res["artefact_bytes"] = sum(f.stat().st_size for f in artefact_files(artefact))
        res["export_seconds"] = export_s
    return res


def artefact_files(artefact: Path) -> list[Path]:
    """The files one artefact is made of (OpenVINO IR: model.xml and its weights, model.bin)."""
    artefact = Path(artefact)
    return [artefact, artefact.with_suffix(".bin")] if artefact.suffix == ".xml" else [artefact]


def best(entries: dict[str, dict[str, Any]], device: str = "cpu", verified_only: bool = True,
         shippable: bool = False) -> str | None:
    """The key of the lowest batch-1 latency among ``device``'s runtimes (verified ones only unless
    told; ``shippable``: only those with an artefact to download, the bundle counting for eager)."""
    cands = {k: v for k, v in entries.items() if "latency_ms" in v and (k.endswith(f"_{device}") or
             (device == "cpu" and "_" not in k))
             and (not verified_only or v.get("verified", True))
             and (not shippable or v.get("artefact") or k.split("_")[0] == "eager")}
    return min(cands, key=lambda k: cands[k]["latency_ms"]) if cands else None


def predictor_for(name: str, model: nn.Module, input_shape: tuple[int, ...], folder: Path, threads: int,
                  device: str = "cpu") -> Predictor:
    """``model`` exported to runtime ``name`` in ``folder`` and loaded there: e.g. a run's start put in
    the same runtime as the run, so a paired speed-up credits pruning, not the runtime."""
    dep = DEPLOYMENTS[name]
    if dep.in_child:
        raise ValueError(f"{dep.label} is timed in a child process, not through a predictor")
    onnx_path = None
    if dep.from_onnx:
        onnx_path = folder / "model.onnx"
        export.export_onnx(model, input_shape, onnx_path)
    return dep.load(dep.export(model, input_shape, folder, onnx_path), model, device, threads)
