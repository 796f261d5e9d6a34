"""Which devices this machine has, and whether a spec's ``train.device`` can run here.

Importing this module is cheap: torch is imported inside the functions that need it, because the
worker and the job queue count GPUs without it (and must not initialise CUDA in their process).
"""
from __future__ import annotations

import os


def gpu_count() -> int:
    """GPUs without initialising CUDA in this process (cheap; the dashboard calls it)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return 0


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def devices_problem(device: str, devices: int) -> str | None:
    """Why ``train.devices`` training processes (DDP ranks) cannot run here on ``train.device``; None when
    they can. Each rank holds its own model, optimiser and data loader, so ranks beyond the hardware
    only cost memory (6 CPU ranks took 2.7 GB; 64 would take about 25 GB)."""
    if devices <= 1:
        return None
    gpus = 0 if device == "cpu" else gpu_count()
    if device.startswith("cuda") or (device == "auto" and gpus):
        first = int(device[5:]) if device.startswith("cuda:") else 0
        usable = max(0, gpus - first)
        if devices > usable:
            return (f"{device} leaves {usable} CUDA device(s) on this machine (one training process per GPU, "
                    f"from cuda:{first} on): use at most {max(usable, 1)}, got {devices}")
        return None
    cores = cpu_cores()
    if devices > cores:
        return (f"this machine has {cores} CPU core(s) for CPU training (one process per device, each with its "
                f"own copy of the model and data): use at most {cores}, got {devices}")
    return None


def device_problem(name: str) -> str | None:
    """Why ``name`` (a train.device value) cannot be used on this machine; None when it can."""
    if not name.startswith("cuda"):
        return None
    import torch  # only for specs that ask for CUDA (see the module note)
    if not torch.cuda.is_available():
        return f"train.device is {name!r} but no CUDA device is available here; use auto or cpu"
    count, index = torch.cuda.device_count(), int(name[5:]) if name.startswith("cuda:") else 0
    if index >= count:
        return f"train.device is {name!r} but this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})"
    return None


def resolve_device(name: str = "auto"):
    """The ``torch.device`` for a train.device value; a RuntimeError naming the problem if it cannot run here."""
    import torch  # see the module note
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    problem = device_problem(name)
    if problem:
        raise RuntimeError(problem)
    return torch.device(name)
