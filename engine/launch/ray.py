"""A run as a Ray task, on the cluster this process is connected to or connects to through ``RAY_ADDRESS``
(an unauthenticated remote head is refused). The task writes into the shared workspace like a local run,
so the cluster's nodes must share its filesystem and have Slimbench installed."""
from __future__ import annotations

import functools
import os
from typing import Any, Callable

from .. import settings
from ..errors import SpecError
from ..ray_auth import unauthenticated_remote


def _ray() -> Any:
    try:
        import ray   # lazy: importing Ray takes seconds; only this backend needs it
    except ImportError:
        raise SpecError(settings.BACKEND.name, "ray is not installed: pip install -r requirements-ray.txt") from None
    return ray


def connect() -> bool:
    """Connect unless already connected (inside a Ray task it is); True when this call connected, so that
    its caller shuts the session down again."""
    ray = _ray()
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS") or None
    if problem := unauthenticated_remote(address, os.environ.get("RAY_AUTH_MODE")):
        raise SpecError("RAY_AUTH_MODE", problem)
    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return True


def disconnect() -> None:
    _ray().shutdown()


def capacity() -> int:
    """Runs the cluster can hold at once: its GPUs if it has any, else its CPUs."""
    res = _ray().cluster_resources()
    return max(1, int(res.get("GPU", 0)) or int(res.get("CPU", 1)))


class TaskHandle:
    def __init__(self, ref: Any):
        self.ref = ref

    def poll(self) -> int | None:
        ray = _ray()
        ready, _ = ray.wait([self.ref], timeout=0)
        if not ready:
            return None
        try:
            return int(ray.get(self.ref))
        except ray.exceptions.RayError:   # cancelled, or its worker or node died
            return -9

    def kill(self) -> None:
        _ray().cancel(self.ref, force=True)


@functools.cache
def _remote(fn: Callable[..., int]) -> Any:
    return _ray().remote(max_retries=0)(fn)   # a retry would run a half-written run again


def submit(fn: Callable[..., int], args: tuple, *, num_cpus: float, num_gpus: float,
           env: dict[str, str]) -> TaskHandle:
    """``fn(*args)`` (an exit status) as a task asking for ``num_cpus`` CPUs and ``num_gpus`` GPUs, with ``env``
    set in its worker; connect first."""
    options = {"num_cpus": num_cpus, "num_gpus": num_gpus, "runtime_env": {"env_vars": env}}
    return TaskHandle(_remote(fn).options(**options).remote(*args))
