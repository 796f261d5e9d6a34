"""Honest measurements of a model: size, compute, sparsity, speed and memory.

MACs and FLOPs come from ``torch.utils.flop_counter`` (FLOPs = 2 x MACs for conv/matmul; note that
torchvision's published "GFLOPS" are MACs). Latency is the median of repeated synchronised runs
after warm-up, with the CPU thread count fixed and recorded.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
import weakref
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from . import conditions, settings


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prunable_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The weight tensors of conv and linear layers: what pruning acts on and sparsity is about."""
    return [(f"{name}.weight" if name else "weight", m.weight) for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and getattr(m, "weight", None) is not None]


def sparsity(model: nn.Module) -> float:
    """Share of exactly-zero weights among all conv/linear weights."""
    ws = prunable_weights(model)
    total = sum(w.numel() for _, w in ws)
    zeros = sum((w == 0).sum().item() for _, w in ws)
    return zeros / total if total else 0.0


@torch.no_grad()
def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


# torch counts the CUDA attention kernels but not the CPU one (its q.k and attention.v products, 4 % of
# ViT-B/16's MACs): the same formula for it.
_CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def forward_once(model: nn.Module, input_shape: tuple[int, ...], hooks: list) -> None:
    """One zero image through ``model`` in eval mode, for what forward ``hooks`` record; the hooks are
    removed and the model's train/eval mode restored however it ends."""
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Dense MACs/FLOPs for one image, and 'sparse' MACs that skip exactly-zero weights."""
    model = model.eval()
    device = _device_of(model)
    x = torch.zeros((1, *input_shape), device=device)
    # Attention's inference fast path is one fused kernel the counter cannot see into (a ViT's projections
    # and attention products would go uncounted): count the plain path, which computes the same.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION) as fc, torch.no_grad():
            model(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    flops = int(fc.get_total_flops())
    # Per-layer FLOPs (keys are "<RootClass>.<module path>") weighted by each layer's density.
    per_module = fc.get_flop_counts()
    root = type(model).__name__
    saved = 0.0
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)) or not name:
            continue
        counts = per_module.get(f"{root}.{name}")
        if not counts:
            continue
        layer_flops = sum(int(v) for v in counts.values())
        w = m.weight
        saved += layer_flops * (w == 0).sum().item() / w.numel()
    return {"flops": flops, "macs": flops // 2, "sparse_macs": int(round((flops - saved) / 2))}


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_runs(fn: Callable[[], Any], runs: int, warmup: int, device: torch.device,
              min_seconds: float = 0.0) -> list[float]:
    """Wall-clock seconds of each timed call after ``warmup`` untimed ones (synchronised on CUDA)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs or (time.perf_counter() - start < min_seconds and len(times) < runs * 10):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


class _LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of tensor storage created under it that are still alive, and their peak.

    Every op's outputs pass through ``__torch_dispatch__``: a storage not seen before (and not one of
    ``excluded``, e.g. the weights, which a view such as a transposed weight shares) is added; a
    weakref finaliser takes it off again when the last tensor tracked on it is freed. Scratch memory
    inside a single kernel is not a tensor and is not seen."""

    def __init__(self, excluded: set[int]):
        super().__init__()
        self.excluded, self.live, self.now, self.peak = excluded, {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key == 0 or key in self.excluded:
            return
        entry = self.live.get(key)
        if entry is None:
            entry = self.live[key] = [storage.nbytes(), 0]
            self.now += entry[0]
            self.peak = max(self.peak, self.now)
        entry[1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                self.now -= entry[0]
                del self.live[key]


@torch.no_grad()
def activation_peak_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Peak bytes held at once by the input batch ``x`` and the tensors one forward creates (activations
    and outputs; the weights excluded): what inference at this batch needs beyond the model itself.

    Counted op by op (``_LiveTensorBytes``), so it does not depend on what the process's allocator
    already holds: growth of the resident set inside a process that has run the model before is ~0."""
    excluded = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    excluded.add(x.untyped_storage().data_ptr())
    tracker = _LiveTensorBytes(excluded)
    with tracker:
        model(x)
    return x.untyped_storage().nbytes() + tracker.peak


TIMING_LOCK = "timing.lock"


@contextmanager
def timing_lock(root: Path | str | None) -> Iterator[float]:
    """Hold the workspace's timing lock (``root``/timing.lock) while timing: jobs that run at once take turns
    here, so one job's latency runs never share the cores with another's (two timings at once each see the
    other as load and skew both sides of a paired ratio differently). Yields the seconds it waited. None
    (no workspace), or a platform without ``fcntl``: no lock."""
    try:
        import fcntl
    except ImportError:   # Windows: no advisory locks of this kind; jobs there run one at a time by default
        fcntl = None
    if root is None or fcntl is None:
        yield 0.0
        return
    path = Path(root) / TIMING_LOCK
    t0 = time.perf_counter()
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)   # released when the file closes, also if the process dies
        try:
            yield time.perf_counter() - t0
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def timing_threads(threads: int | None) -> int:
    """The CPU threads a timing uses: as given, else the job's share of the cores where a worker runs jobs at
    once (SLIMBENCH_JOB_THREADS: a timing on more would take the cores the other jobs train on), else all
    physical cores (for PyTorch and ONNX Runtime alike)."""
    if threads:
        return threads
    physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    share = settings.job_threads()   # the worker's split counts logical CPUs: never more than the physical cores
    return min(share, physical) if share else physical


@contextmanager
def cpu_threads(device: torch.device, threads: int | None) -> Iterator[None]:
    """Fix the CPU thread count while timing (all physical cores unless given); restore it after."""
    old = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(timing_threads(threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@torch.no_grad()
def measure_speed(model: Callable[[torch.Tensor], Any], input_shape: tuple[int, ...], device: torch.device,
                  batch_size: int, runs: int = 30, warmup: int = 5, threads: int | None = None,
                  prefix: str = "", activations: bool = True) -> dict[str, Any]:
    """Latency at batch 1 and throughput at ``batch_size``; the memory inference at ``batch_size`` needs.

    Memory: on CUDA, ``torch.cuda.max_memory_allocated`` during the batch runs above what was allocated
    before (``peak_mem_bytes``); for a PyTorch module (``activations``), the peak of the input and
    activation tensors of one forward (``activation_peak_bytes``, see ``activation_peak_bytes``);
    neither for another runtime (ONNX Runtime allocates outside PyTorch)."""
    module = model if isinstance(model, nn.Module) else None
    if module is not None:
        module.eval()
    meter = conditions.EnergyMeter(device.type, device.index or 0)
    with cpu_threads(device, threads):
        used = torch.get_num_threads() if device.type == "cpu" else 1
        load: dict[str, Any] = {}
        x1 = torch.randn((1, *input_shape), device=device)
        with conditions.probe(used, load):
            lat = time_runs(lambda: model(x1), runs, warmup, device, min_seconds=0.5)
        xb = torch.randn((batch_size, *input_shape), device=device)
        batch_runs = max(3, runs // 5)
        memory: dict[str, Any] = {}
        energy: dict[str, Any] = {}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        time_runs(lambda: model(xb), 0, 2 if device.type == "cuda" else 1, device)
        # a hardware energy counter ticks every ~1 ms (RAPL) to ~20-100 ms (NVML): time long enough for it to count
        window = 0.0 if meter.source is None else 0.25 if device.type == "cpu" else 1.0
        with meter.measure(energy):
            tb = time_runs(lambda: model(xb), batch_runs, 0, device, min_seconds=window)
        if device.type == "cuda":
            memory["peak_mem_bytes"] = int(max(0, torch.cuda.max_memory_allocated(device) - base))
        if module is not None and activations:
            memory["activation_peak_bytes"] = activation_peak_bytes(module, xb)
        med = statistics.median(lat)
        out = {
            "latency_ms": med * 1e3,
            "latency_p90_ms": sorted(lat)[int(0.9 * (len(lat) - 1))] * 1e3,
            "latency_cv": statistics.pstdev(lat) / statistics.mean(lat) if len(lat) > 1 else 0.0,
            "latency_runs": len(lat),
            "latency_device": device.type,
            "throughput": batch_size / statistics.median(tb),
            "throughput_batch": batch_size,
            **memory,
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            **load,
            **energy_fields(energy.get("joules"), batch_size * len(tb), meter),
        }
    return {f"{prefix}{k}": v for k, v in out.items()}


def energy_fields(joules: float | None, images: int, meter: conditions.EnergyMeter) -> dict[str, Any]:
    """Millijoules per image from a hardware counter, and where it came from or why there is none."""
    if joules is None or images <= 0:
        return {"energy_mj_per_image": None, "energy_source": f"not available: {meter.reason}"}
    return {"energy_mj_per_image": 1e3 * joules / images, "energy_source": meter.source}


@torch.no_grad()
def paired_speedup(ref: Callable[[torch.Tensor], Any], cand: Callable[[torch.Tensor], Any],
                   input_shape: tuple[int, ...], device: torch.device, runs: int = 30, warmup: int = 5,
                   threads: int | None = None, rounds: int = 5, batch: int = 1) -> dict[str, Any]:
    """How many times faster ``cand`` is than ``ref`` at batch ``batch`` (1 unless told), timed interleaved.

    Latencies measured minutes apart differ by tens of percent on shared machines (other tenants,
    clock changes). Here each of ``rounds`` rounds times ref, cand, cand, ref in blocks (ABBA), so a
    drift hits both alike; the speed-up is the median of the per-round ratios of median latencies,
    with their min-max as the spread. ``runs`` timed calls per model in all.
    """
    for m in (ref, cand):
        if isinstance(m, nn.Module):
            m.eval()
    fns = (ref, cand)
    rounds = max(1, rounds)
    half = max(2, runs // rounds // 2)
    fallback = conditions.contended(timing_threads(threads)) if device.type == "cpu" else None
    if fallback:   # threads that wait for a core skew each side by a different amount: 1 thread stays fair
        threads = 1
    load: dict[str, Any] = {}
    with cpu_threads(device, threads), conditions.probe(timing_threads(threads) if device.type == "cpu" else 1, load):
        x = torch.randn((batch, *input_shape), device=device)
        for f in fns:
            time_runs(lambda: f(x), 0, warmup, device)
        samples: tuple[list[float], list[float]] = ([], [])
        ratios = []
        for _ in range(rounds):
            block: tuple[list[float], list[float]] = ([], [])
            for j in (0, 1, 1, 0):
                block[j].extend(time_runs(lambda: fns[j](x), half, 0, device))
            ratios.append(statistics.median(block[0]) / statistics.median(block[1]))
            for j in (0, 1):
                samples[j].extend(block[j])
    return {"speedup": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios),
            "rounds": rounds, "runs": len(samples[1]), "ref_latency_ms": statistics.median(samples[0]) * 1e3,
            "latency_ms": statistics.median(samples[1]) * 1e3,
            "threads": timing_threads(threads) if device.type == "cpu" else None,
            "threads_fallback": f"timed on 1 thread: {fallback}" if fallback else None, **load}


def measure_model(model: nn.Module, input_shape: tuple[int, ...], cfg, cuda: bool | None = None,
                  timing: Callable[[str], Callable[[torch.Tensor], Any] | None] | None = None) -> dict[str, Any]:
    """Static metrics of a PyTorch model and the speed of what runs it: CPU always, CUDA too when present.

    ``timing(device)`` is the callable timed there (a runtime's, e.g. the INT8 ONNX Runtime model
    counted on its fp32 graph), None where it does not run; by default the model itself. CPU keys
    are unprefixed (``latency_ms``, ``throughput``, ``activation_peak_bytes``) with the CPU's model
    (``cpu_model``); CUDA ones are ``gpu_*``, with the GPU's name (``gpu_name``).
    """
    timing = timing or (lambda device: model.to(device).eval())
    on_cpu = model.to("cpu").eval()
    out: dict[str, Any] = {"params": count_params(on_cpu),
                           "nonzero_params": sum(int((p != 0).sum()) for p in on_cpu.parameters()),
                           "sparsity": sparsity(on_cpu), **count_macs(on_cpu, input_shape)}
    out.update(measure_speed(timing("cpu"), input_shape, torch.device("cpu"), cfg.batch_size,
                             cfg.latency_runs, cfg.warmup_runs, cfg.threads))
    out["cpu_model"] = cpu_model()
    if cuda is None:
        cuda = torch.cuda.is_available()
    gpu = timing("cuda") if cuda else None
    if gpu is not None:
        dev = torch.device("cuda")
        # the activation count is the graph's, the same on any device: taken once, on the CPU
        out.update(measure_speed(gpu, input_shape, dev, cfg.gpu_batch_size, cfg.latency_runs,
                                 cfg.warmup_runs, prefix="gpu_", activations=False))
        out["gpu_name"] = torch.cuda.get_device_name(dev)
        model.to("cpu")
    return out


def deflated_bytes(path: str | Path, level: int = 1) -> int:
    """The file's size once deflated (zlib, the compression of ``zip`` and ``gzip``): what unstructured
    sparsity saves in transfer and storage, where the file itself keeps its zeros dense. Level 1: runs
    of zeros shrink alike at every level, and trained float weights hardly at any (level 6 takes twice
    as long for ~0.3 % less on a ResNet-18), so the cheap level measures the saving in every job."""
    z, n = zlib.compressobj(level), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += len(z.compress(chunk))
    return n + len(z.flush())


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo's "model name"), else what the platform says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
