"""Where a claimed job runs. Every backend offers ``start(job_id, slot, lease) -> handle`` (``lease``:
the claim's token, which the job passes to every write) where a handle has ``poll() -> exit code |
None`` and ``kill()``; the worker owns the queue, heartbeats and bookkeeping, so backends stay small.
``local`` (default) runs a process per job on this machine, ``ray`` runs each job as a Ray task on a
cluster that shares the workspace filesystem."""
from __future__ import annotations

from typing import Any

from .. import settings
from ..errors import SpecError
from .local import LocalBackend


def get(name: str, store: Any, concurrency: int):
    if name == "local":
        return LocalBackend(store, concurrency)
    if name == "ray":
        from .ray import RayBackend  # lazy: importing Ray takes seconds; only this backend needs it
        return RayBackend(store, concurrency)
    raise SpecError(settings.BACKEND.name, f"unknown backend {name!r}; valid: local, ray")
