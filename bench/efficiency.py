"""Engine efficiency and measurement trust: the engine's own paths against bare PyTorch loops."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from engine import measure, models, training
from engine.data import DataBundle
from engine.spec import TrainSpec


@torch.no_grad()
def eval_throughput_ratio(data: DataBundle, device: torch.device, arch: str = "resnet18", repeats: int | None = None
                          ) -> dict:
    """Images/s of training.predict over the engine's loader ÷ a bare no_grad loop over ready tensors,
    timed in interleaved rounds (median of the per-round ratios, with their min-max)."""
    model = models.build(arch, data.num_classes, True).to(device).eval()
    loader = data.loader("test", device, batch_size=256)
    ready = [(x.clone(), y) for x, y in loader]
    n = sum(len(y) for _, y in ready)

    def bare() -> None:
        for x, _ in ready:
            model(x)

    def engine_path() -> None:
        training.predict(model, loader, device)
    engine_path(), bare()  # warm-up
    e, b = [], []
    # 2 rounds on CPU (each pass over the test set takes seconds there): `make bench` stays in its budget
    for _ in range(repeats or (3 if device.type == "cuda" else 2)):  # ABBA rounds: a machine drift hits both paths alike
        e1, b1, b2, e2 = (_timed(f, device) for f in (engine_path, bare, bare, engine_path))
        e.append(e1 + e2)
        b.append(b1 + b2)
    ratios = [bi / ei for bi, ei in zip(b, e)]
    return {"engine_ips": 2 * n / statistics.median(e), "bare_ips": 2 * n / statistics.median(b),
            "ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)]}


def _timed(fn, device) -> float:
    measure._sync(device)
    t0 = time.perf_counter()
    fn()
    measure._sync(device)
    return time.perf_counter() - t0


def train_ips(data: DataBundle, device: torch.device, arch: str = "resnet18", steps: int = 30,
              warmup: int = 5) -> float:
    """Training images/s of a plain FP32 eager loop (no AMP, no channels_last) over the engine's loader."""
    torch.manual_seed(0)
    model = models.build(arch, data.num_classes, True).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = data.loader("train", device, train=True)
    it = iter(loader)
    seen, t0 = 0, None
    for i in range(steps + warmup):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        if i == warmup:
            measure._sync(device)
            t0, seen = time.perf_counter(), 0
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
    measure._sync(device)
    return seen / (time.perf_counter() - t0)


def fit_ips(data: DataBundle, device: torch.device, arch: str = "resnet18", epochs: int = 1,
            compile: bool = False) -> float:
    """Training images/s of the engine's own loop (``training.fit`` with its defaults: AMP and
    channels_last on CUDA, the engine's loader, hooks, progress reports; ``compile``: train.compile) in
    its last epoch, from the first step's report to the last (each report reads the loss, so both points
    are synchronised; compilation happens in the first step of the first epoch, outside the timing)."""
    torch.manual_seed(0)
    model = models.build(arch, data.num_classes, True)
    marks: list[tuple[float, int, int]] = []

    def progress(**ev) -> None:
        if ev.get("epoch") == epochs and "images" in ev:
            marks.append((time.perf_counter(), ev["step"], ev["images"]))
    training.fit(model, data, TrainSpec(epochs=epochs, compile=compile), device=device, progress=progress,
                 keep_best=False)
    (t0, s0, n0), (t1, s1, n1) = marks[0], marks[-1]
    if s1 <= s0:
        raise ValueError("the training split is too small to time: it needs at least two batches")
    return (n1 - n0) / (t1 - t0)


def train_throughput_ratio(data: DataBundle, device: torch.device, arch: str = "resnet18",
                           steps: int | None = None, warmup: int = 5) -> dict:
    """Training images/s of the engine's fit loop with its defaults ÷ a plain FP32 eager loop, same
    device and batch. On CUDA the engine gets a warm-up epoch first (its last epoch is timed), and is
    timed twice: eager, and with ``train.compile`` (off by default: this is where it is measured whether
    it pays); ``ratio`` is the faster of the two, the engine's best GPU setting. On the CPU compile is
    not timed (off there, and minutes of compiling would not fit `make bench`)."""
    cuda = device.type == "cuda"
    steps = steps or (30 if cuda else 10)  # ~10 s per CPU step pair: keep `make bench` in its budget
    eager = fit_ips(data, device, arch, epochs=2 if cuda else 1)
    compiled = fit_ips(data, device, arch, epochs=2, compile=True) if cuda else None
    plain = train_ips(data, device, arch, steps, warmup)
    best = max(eager, compiled or 0.0)
    return {"engine_train_ips": best, "engine_eager_ips": eager, "engine_compiled_ips": compiled,
            "plain_fp32_ips": plain, "ratio": best / plain, "ratio_eager": eager / plain,
            "ratio_compiled": compiled / plain if compiled else None,
            "compile_pays": compiled is not None and compiled > eager}


def train_share_of_peak(train_images_per_s: float, device: torch.device, arch: str = "resnet18",
                        n: int = 8192) -> dict:
    """Training FLOP/s (forward + backward ≈ 3x forward FLOPs per image) against the measured bf16
    dense-matmul peak: AMP trains in bf16, so that is the ceiling it can approach."""
    flops = measure.count_macs(models.build(arch, 10, True).eval(), (3, 32, 32))["flops"]
    achieved = 3 * flops * train_images_per_s / 1e9
    peak = matmul_peak_gflops(device, n=n, dtype=torch.bfloat16)
    return {"gflops_achieved": achieved, "peak_gflops": peak, "share": achieved / peak}


def matmul_peak_gflops(device: torch.device, n: int = 2048, dtype=torch.float32) -> float:
    """An empirical peak: a large dense matrix product's GFLOP/s on this device and thread count."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = measure.time_runs(lambda: a @ b, 5, 2, device)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def inference_share_of_peak(device: torch.device, arch: str = "resnet18", batch: int = 64, rounds: int = 5,
                            n: int = 2048) -> dict:
    """Inference FLOP/s at ``batch`` against a 2048² fp32 matmul's, the two timed in alternating rounds and
    compared per round (median, with the rounds' min-max): measured minutes apart on a shared 2-core VM, the
    peak once came out lower than the network's own rate (a "125 %" share)."""
    model = models.build(arch, 10, True).to(device).eval()
    flops = measure.count_macs(model, (3, 32, 32))["flops"]
    x = torch.randn(batch, 3, 32, 32, device=device)
    ips, peaks = [], []
    with torch.no_grad():
        for r in range(rounds):
            ips.append(batch / statistics.median(measure.time_runs(lambda: model(x), 3, 2 if r == 0 else 0, device)))
            peaks.append(matmul_peak_gflops(device, n))
    shares = [flops * i / 1e9 / p for i, p in zip(ips, peaks)]
    return {"images_per_s": statistics.median(ips), "gflops_achieved": flops * statistics.median(ips) / 1e9,
            "peak_gflops": statistics.median(peaks), "share": statistics.median(shares),
            "share_range": (min(shares), max(shares)), "rounds": rounds}


def latency_repeatability(device: torch.device, arch: str = "resnet18", repeats: int = 5, runs: int = 30) -> dict:
    """CV of the batch-1 latency median over independent measurement repeats."""
    model = models.build(arch, 10, True).to(device).eval()
    meds = [measure.measure_speed(model, (3, 32, 32), device, 8, runs=runs, warmup=5)["latency_ms"]
            for _ in range(repeats)]
    return {"medians_ms": meds, "cv": statistics.pstdev(meds) / statistics.mean(meds)}


REFERENCE_SPEC = {"data": {"name": "digits"}, "model": {"arch": "resnet18"}, "method": {"name": "baseline"},
                  "train": {"epochs": 3}}


def reference_run(device: torch.device, epochs: int | None = None, measure: dict | None = None) -> dict:
    """The engine's reference job (ResNet-18 on digits, 3 epochs) end to end through the CLI, as a user
    runs it: process start, data, training, measurement, ONNX export and the store, timed by the wall clock."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="slimbench-ref-") as tmp:
        spec = Path(tmp) / "spec.json"
        train = {**REFERENCE_SPEC["train"], "device": device.type, **({"epochs": epochs} if epochs else {})}
        spec.write_text(json.dumps({**REFERENCE_SPEC, "train": train, **({"measure": measure} if measure else {})}))
        env = {**os.environ, "SLIMBENCH_HOME": str(Path(tmp) / "ws")}
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "engine", "run", str(spec)], cwd=root, env=env,
                           capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"reference run failed: {p.stderr[-2000:]}")
    record = json.loads(p.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "train_s": record["train_seconds"], "accuracy": record["accuracy"]}
