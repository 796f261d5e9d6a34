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
