"""Each claimed job as a Ray task on a cluster (``SLIMBENCH_BACKEND=ray``, ``RAY_ADDRESS``).

The worker still owns the queue: it claims jobs, heartbeats them and enforces cancels; Ray only
decides where each job runs, with a resource request from its spec (one GPU per device when the
spec asks for CUDA). The task runs the same ``jobproc.run_job`` as the local backend, against the
workspace path, so progress, results and artifacts land in the same store: the cluster's nodes
must share the workspace filesystem and have Slimbench installed (`pip install -e .` of this checkout).
"""
from __future__ import annotations

import os
from typing import Any

from .. import settings
from ..errors import SpecError
from ..jobproc import run_job
from ..ray_auth import own_addresses, unauthenticated_remote  # noqa: F401 (re-exported)
from ..store import Store

try:
    import ray
except ImportError:  # optional extra: requirements-ray.txt
    ray = None


def _run_job_task(job_id: str, home: str, threads: int, lease: str) -> int:
    """Runs inside a Ray worker process."""
    import torch  # lazy: the worker that imports this module stays torch-free
    torch.set_num_threads(max(1, threads))
    return run_job(job_id, Store(home), lease=lease)


def resources_for(spec: dict[str, Any]) -> dict[str, float]:
    """CPU/GPU request of one job: ``devices`` GPUs for a CUDA spec, one CPU per device otherwise."""
    train = spec.get("train", {})
    devices = int(train.get("devices") or 1)
    wants_cuda = str(train.get("device", "auto")).startswith("cuda")
    return {"num_cpus": 1, "num_gpus": devices} if wants_cuda else {"num_cpus": devices, "num_gpus": 0}


class RayHandle:
    def __init__(self, ref):
        self.ref = ref

    def poll(self) -> int | None:
        ready, _ = ray.wait([self.ref], timeout=0)
        if not ready:
            return None
        try:
            return int(ray.get(self.ref))
        except ray.exceptions.TaskCancelledError:
            return -9
        except ray.exceptions.RayError:  # the Ray worker or its node died
            return -9

    def kill(self) -> None:
        ray.cancel(self.ref, force=True)


class RayBackend:
    name = "ray"

    def __init__(self, store: Store, concurrency: int):
        if ray is None:
            raise SpecError(settings.BACKEND.name, "ray is not installed: pip install -r requirements-ray.txt")
        self.store, self.concurrency = store, concurrency
        self.started_ray = False
        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS") or None
            if problem := unauthenticated_remote(address, os.environ.get("RAY_AUTH_MODE")):
                raise SpecError("RAY_AUTH_MODE", problem)
            ray.init(address=address, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
            self.started_ray = True
        self.runtime_env = {"env_vars": {settings.HOME.name: str(store.root)}}
        self.task = ray.remote(max_retries=0)(_run_job_task)

    @staticmethod
    def cluster_concurrency() -> int:
        """Jobs the cluster can hold at once: its GPUs if it has any, else its CPUs."""
        res = ray.cluster_resources()
        return max(1, int(res.get("GPU", 0)) or int(res.get("CPU", 1)))

    def start(self, job_id: str, slot: int, lease: str) -> RayHandle:
        row = self.store.get(job_id)
        req = resources_for(row["spec"])
        ref = self.task.options(runtime_env=self.runtime_env, **req).remote(job_id, str(self.store.root),
                                                                            int(req["num_cpus"]), lease)
        self.store.add_event(job_id, {"phase": "scheduled", "backend": "ray", "task_id": ref.task_id().hex(), **req},
                             lease=lease)
        return RayHandle(ref)

    def close(self) -> None:
        if self.started_ray:
            ray.shutdown()
