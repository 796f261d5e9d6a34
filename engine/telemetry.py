"""Hardware sampling: NVIDIA GPUs through NVML (``nvidia-ml-py``), CPU and RAM through psutil.

Machines without an NVIDIA driver get ``{"available": False, "reason": ...}`` instead of an error.
``Sampler`` keeps a rolling history (a few minutes) for the dashboard's charts.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Iterable

import psutil

_nvml_lock = threading.Lock()
_nvml_state: dict[str, Any] = {"init": False, "error": None}


def _nvml():
    """The initialised pynvml module, or raise RuntimeError with a reason a person can read."""
    with _nvml_lock:
        if _nvml_state["init"]:
            import pynvml
            return pynvml
        if _nvml_state["error"]:
            raise RuntimeError(_nvml_state["error"])
        try:
            import pynvml
        except ImportError:
            _nvml_state["error"] = "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
            raise RuntimeError(_nvml_state["error"]) from None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            _nvml_state["error"] = f"NVML could not start ({e})"
            raise RuntimeError(_nvml_state["error"]) from None
        _nvml_state["init"] = True
        return pynvml


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _process_name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except (psutil.Error, OSError):
        return "?"


def gpu_snapshot() -> dict[str, Any]:
    """Per-GPU memory, utilisation, temperature, power and per-process memory, or why there are none."""
    try:
        nv = _nvml()
    except RuntimeError as e:
        return {"available": False, "reason": str(e), "gpus": []}
    gpus = []
    try:
        driver = _text(nv.nvmlSystemGetDriverVersion())
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            g: dict[str, Any] = {"index": i, "name": _text(nv.nvmlDeviceGetName(h)),
                                 "memory_used_bytes": int(mem.used), "memory_total_bytes": int(mem.total)}
            for key, fn in (("utilization_pct", lambda: nv.nvmlDeviceGetUtilizationRates(h).gpu),
                            ("memory_utilization_pct", lambda: nv.nvmlDeviceGetUtilizationRates(h).memory),
                            ("temperature_c", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
                            ("power_w", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0)):
                try:
                    g[key] = fn()
                except nv.NVMLError:   # not every board reports every sensor
                    g[key] = None
            procs = []
            for getter in (nv.nvmlDeviceGetComputeRunningProcesses, nv.nvmlDeviceGetGraphicsRunningProcesses):
                try:
                    for p in getter(h):
                        used = p.usedGpuMemory if isinstance(p.usedGpuMemory, int) and p.usedGpuMemory >= 0 else None
                        procs.append({"pid": int(p.pid), "name": _process_name(int(p.pid)), "memory_used_bytes": used})
                except nv.NVMLError:
                    pass
            g["processes"] = list({p["pid"]: p for p in procs}.values())
            gpus.append(g)
    except nv.NVMLError as e:
        return {"available": False, "reason": f"NVML query failed: {e}", "gpus": []}
    return {"available": bool(gpus), "reason": "" if gpus else "NVML found no GPUs", "driver": driver, "gpus": gpus}


def system_snapshot() -> dict[str, Any]:
    """RAM and load now. CPU use needs two readings some time apart: ``Sampler`` adds it."""
    vm = psutil.virtual_memory()
    return {"cpu_count": psutil.cpu_count(),
            "ram_used_bytes": int(vm.total - vm.available), "ram_total_bytes": int(vm.total), "ram_pct": vm.percent,
            "load_avg": list(psutil.getloadavg())}


def busy_pct(before: Any, after: Any) -> float | None:
    """Share of all cores' time that was busy between two ``psutil.cpu_times()`` readings (as psutil's
    cpu_percent, but from readings this caller owns: psutil's own state is shared by every caller)."""
    def split(t: Any) -> tuple[float, float]:
        fields = t._asdict()
        # guest time is already counted in user/nice on Linux
        total = sum(v for k, v in fields.items() if k not in ("guest", "guest_nice"))
        return total, fields.get("idle", 0.0) + fields.get("iowait", 0.0)
    (t0, i0), (t1, i1) = split(before), split(after)
    return None if t1 <= t0 else min(100.0, max(0.0, 100.0 * (1 - (i1 - i0) / (t1 - t0))))


def job_pids(rows: Iterable[dict[str, Any]]) -> dict[int, str]:
    """pid -> run id for running jobs and the processes they started (e.g. data loaders)."""
    out: dict[int, str] = {}
    for r in rows:
        pid = r.get("pid")
        if r.get("state") != "running" or not pid:
            continue
        out[int(pid)] = r["id"]
        try:
            for child in psutil.Process(int(pid)).children(recursive=True):
                out[child.pid] = r["id"]
        except (psutil.Error, OSError):
            pass
    return out


def label_processes(snapshot: dict[str, Any], pids: dict[int, str]) -> list[dict[str, Any]]:
    """Flatten GPU processes across devices, each with ``job`` set to the run id where it matches."""
    return [{"gpu": g["index"], **p, "job": pids.get(p["pid"])} for g in snapshot.get("gpus", [])
            for p in g.get("processes", [])]


class Sampler:
    """Rolling history of samples; ``sample()`` is cheap enough to call every second or two."""

    def __init__(self, seconds: float = 300.0, min_interval: float = 1.0, max_gap: float = 10.0):
        self.seconds, self.min_interval, self.max_gap = seconds, min_interval, max_gap
        self.history: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._procs: dict[int, psutil.Process] = {}
        self._last: dict[str, Any] | None = None
        self._cpu: tuple[float, Any] | None = None  # (monotonic, cpu_times) of the previous sample

    def sample(self) -> dict[str, Any]:
        """A new sample, or the latest one if it is under ``min_interval`` old: one shared sampler
        serves every open page, and CPU use over a few milliseconds is noise (it read 0 % on entering
        the page). CPU use is None for the first sample and after ``max_gap`` without one: an average
        over minutes nobody watched is no live reading."""
        with self._lock:
            mono = time.monotonic()
            if self._last is not None and mono - self._last["mono"] < self.min_interval:
                return self._last["snap"]
            prev, after = self._cpu, psutil.cpu_times()
            self._cpu = (mono, after)
            sysm, gpu = system_snapshot(), gpu_snapshot()
            # the first sample has no interval of its own (one from the constructor could be microseconds)
            sysm["cpu_pct"] = (busy_pct(prev[1], after) if prev is not None and mono - prev[0] <= self.max_gap
                               else None)
            now = time.time()
            point = {"ts": now, "cpu_pct": sysm["cpu_pct"], "ram_pct": sysm["ram_pct"]}
            for g in gpu["gpus"]:
                point[f"gpu{g['index']}_mem_pct"] = 100.0 * g["memory_used_bytes"] / max(1, g["memory_total_bytes"])
                point[f"gpu{g['index']}_util_pct"] = g.get("utilization_pct")
            self.history.append(point)
            while self.history and now - self.history[0]["ts"] > self.seconds:
                self.history.popleft()
            snap = {"system": sysm, "gpu": gpu, "point": point}
            self._last = {"mono": mono, "snap": snap}
            return snap

    def points(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.history)

    def processes(self, pids: dict[int, str]) -> list[dict[str, Any]]:
        """CPU use since the previous call (percent of one core: a process on 2 cores can show 200)
        and resident memory of each process in ``pids`` (pid -> run id, as from ``job_pids``).
        A process seen for the first time has ``cpu_pct`` None: psutil needs two readings."""
        out = []
        with self._lock:
            for gone in set(self._procs) - set(pids):
                del self._procs[gone]
            for pid, job in sorted(pids.items()):
                try:
                    proc = self._procs.get(pid)
                    if proc is None:
                        proc = self._procs[pid] = psutil.Process(pid)
                        proc.cpu_percent(interval=None)
                        cpu = None
                    else:
                        cpu = proc.cpu_percent(interval=None)
                    out.append({"pid": pid, "name": proc.name(), "job": job, "cpu_pct": cpu,
                                "rss_bytes": int(proc.memory_info().rss)})
                except (psutil.Error, OSError):   # ended between listing and reading
                    self._procs.pop(pid, None)
        return out
