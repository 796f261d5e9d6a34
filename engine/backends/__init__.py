"""Where a claimed job runs. Every backend offers ``start(job_id, slot) -> handle`` where a handle
has ``poll() -> exit code | None`` and ``kill()``; the worker owns the queue, heartbeats and
bookkeeping, so backends stay small. ``local`` (default) runs a process per job on this machine,
``ray`` runs each job as a Ray task on a cluster that shares the workspace filesystem."""
from __future__ import annotations

from typing import Any


def get(name: str, store: Any, concurrency: int):
    if name == "local":
        from .local import LocalBackend
        return LocalBackend(store, concurrency)
    if name == "ray":
        from .ray import RayBackend
        return RayBackend(store, concurrency)
    from ..spec import SpecError
    raise SpecError("SLIMBENCH_BACKEND", f"unknown backend {name!r}; valid: local, ray")
