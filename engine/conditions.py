"""What a timing was taken under: the machine's load, this process's CPU share, and energy used.

A latency taken while other processes fight for the cores says little about the model: on a loaded
2-core machine a 2-thread eager latency came out 11x its 1-thread one, and a 3.99x MAC cut was
recorded as 1.32x faster. So every timing records the load average and the share of the timing's
threads this process really got, and a figure taken while the cores were not free is flagged
(``loaded``): the load average above the core count, or other processes' CPU use during the timing itself
(the load average trails by a minute: a run timed on a box where tests had just started read 0.78 and was
not flagged while its eager latencies came out ~60x the same model's timed alone). Energy comes from
counters the hardware keeps (RAPL on Intel/AMD CPUs, NVML on NVIDIA GPUs), never from an estimate: where neither can be read the record says why.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import psutil

from .telemetry import _nvml

RAPL_ROOT = Path("/sys/class/powercap")


def cores() -> int:
    """Logical CPUs the load average is measured against (what the kernel schedules onto)."""
    return os.cpu_count() or 1


def load_average() -> float | None:
    """The 1-minute load average, None where the platform keeps none."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def contended(threads: int, sample_s: float = 0.2) -> str | None:
    """Why a timing with ``threads`` threads would not get its cores now (None: it would): the load
    average already fills the cores that the timing would need, or other processes used them over the
    last ``sample_s`` seconds (the load average trails by a minute). The paired timer then falls back to
    one thread, whose ratio stays fair under contention."""
    if threads <= 1:
        return None
    load = load_average()
    if load is not None and load + threads > cores() + 0.5:
        return f"load average {load:.2f} on {cores()} CPUs leaves fewer than {threads} free"
    others = others_now(sample_s)
    if others_took_cores(others, threads):
        return f"other processes used {others:.2f} of {cores()} CPUs just before timing, leaving fewer than {threads} free"
    return None


def others_now(sample_s: float) -> float | None:
    """Cores' worth of CPU other processes use over the next ``sample_s`` seconds (this process sleeps)."""
    own = psutil.Process()
    busy0, cpu0, t0 = busy_seconds(), sum(own.cpu_times()[:2]), time.perf_counter()
    time.sleep(sample_s)
    busy1, cpu1 = busy_seconds(), sum(own.cpu_times()[:2])
    return _others(busy0, busy1, cpu1 - cpu0, time.perf_counter() - t0)


def _others(busy0: float | None, busy1: float | None, own_cpu: float, wall: float) -> float | None:
    """Cores' worth of CPU the other processes used between two ``busy_seconds`` readings ``wall`` apart."""
    return None if None in (busy0, busy1) else max(0.0, (busy1 - busy0 - own_cpu) / wall)


def busy_seconds() -> float | None:
    """CPU seconds every process has used so far, all cores together (/proc/stat via psutil; time stolen by
    a hypervisor counts, since it is not ours either); None where the platform does not say."""
    try:
        t = psutil.cpu_times()
    except (OSError, AttributeError):
        return None
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t) - idle - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)  # guest is inside user


OTHERS_SLACK = 0.25   # cores' worth of other processes' use tolerated (a dashboard, a worker's heartbeat)


def others_took_cores(others: float | None, threads: int) -> bool:
    """Other processes used more of the cores than ``threads`` timing threads left them."""
    return others is not None and others > max(0, cores() - threads) + OTHERS_SLACK


@contextmanager
def probe(threads: int, out: dict[str, Any], prefix: str = "") -> Iterator[None]:
    """Record in ``out`` the load and CPU share of the code run inside: ``load_avg`` (the highest
    1-minute load average seen at its start and end), ``cpu_share`` (this process's CPU seconds ÷
    wall seconds × ``threads``: 1.0 = it had every thread's core all the time), ``others_cpu`` (the
    cores' worth of CPU other processes used meanwhile) and ``loaded`` (the load average was above the
    number of CPUs, or other processes took cores the timing's threads needed: the figure is suspect).
    The shares are None for spans under 0.2 s, too short for the kernel's tick count."""
    proc = psutil.Process()
    before = load_average()
    cpu0, busy0, t0 = sum(proc.cpu_times()[:2]), busy_seconds(), time.perf_counter()
    try:
        yield
    finally:
        wall = time.perf_counter() - t0
        cpu = sum(proc.cpu_times()[:2]) - cpu0
        busy1 = busy_seconds()
        after = load_average()
        seen = [v for v in (before, after) if v is not None]
        load = max(seen) if seen else None
        out[f"{prefix}load_avg"] = load
        # CPU time is counted in clock ticks (~10 ms): a share over a shorter span would be noise
        long_enough = wall >= 0.2
        out[f"{prefix}cpu_share"] = min(1.0, cpu / (wall * max(1, threads))) if long_enough else None
        others = _others(busy0, busy1, cpu, wall) if long_enough else None
        out[f"{prefix}others_cpu"] = others
        out[f"{prefix}loaded"] = bool((load is not None and load > cores()) or others_took_cores(others, threads))


def _rapl_packages() -> list[Path]:
    """The top-level RAPL domains (one per CPU package: ``intel-rapl:N``, not its ``:N:M`` subzones)."""
    if not RAPL_ROOT.is_dir():
        return []
    return sorted(p for p in RAPL_ROOT.glob("intel-rapl:*") if p.name.count(":") == 1)


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


class EnergyMeter:
    """Joules used while running the code inside ``measure()``, from a hardware counter.

    CPU: the RAPL package counters (the whole package's energy, other processes' included: a figure
    from a busy machine is high; ``loaded`` says when). GPU: NVML's total-energy counter of the
    device. ``reason`` says why there is none (no counter, or it is not readable: RAPL is root-only
    on most kernels since 2020)."""

    def __init__(self, device: str, index: int = 0):
        self.device, self.index, self.reason, self.source = device, index, None, None
        self._read = self._cpu_reader() if device == "cpu" else self._gpu_reader()

    def _cpu_reader(self):
        zones = _rapl_packages()
        if not zones:
            self.reason = "no RAPL counter on this machine (/sys/class/powercap/intel-rapl*)"
            return None
        try:
            ranges = [_read_int(z / "max_energy_range_uj") for z in zones]
            [_read_int(z / "energy_uj") for z in zones]
        except (OSError, ValueError) as e:
            self.reason = f"RAPL counters are not readable here ({type(e).__name__}; root-only on most kernels)"
            return None
        self.source = "RAPL (CPU package)"

        def read() -> list[tuple[int, int]]:
            return [(_read_int(z / "energy_uj"), r) for z, r in zip(zones, ranges)]
        return read

    def _gpu_reader(self):
        try:
            nv = _nvml()
            handle = nv.nvmlDeviceGetHandleByIndex(self.index)
            nv.nvmlDeviceGetTotalEnergyConsumption(handle)
        except Exception as e:  # NVML missing, or a GPU without the counter (pre-Volta)
            self.reason = f"no NVML energy counter ({str(e) or type(e).__name__})"
            return None
        self.source = "NVML (GPU board)"
        return lambda: [(int(nv.nvmlDeviceGetTotalEnergyConsumption(handle)) * 1000, 0)]   # mJ -> µJ

    @contextmanager
    def measure(self, out: dict[str, Any]) -> Iterator[None]:
        """Put the joules used inside into ``out["joules"]`` (None where there is no counter)."""
        start = self._read() if self._read else None
        try:
            yield
        finally:
            if start is None:
                out["joules"] = None
            else:
                total = 0
                for (a, wrap), (b, _) in zip(start, self._read()):
                    total += b - a if b >= a else b + wrap - a   # the counter wrapped round
                out["joules"] = total / 1e6
