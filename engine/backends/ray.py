"""Each claimed job as a Ray task on a cluster (``SLIMBENCH_BACKEND=ray``, ``RAY_ADDRESS``).

The worker still owns the queue: it claims jobs, heartbeats them and enforces cancels; Ray only
decides where each job runs, with a resource request from its spec (one GPU per device when the
spec asks for CUDA). The task runs the same ``jobproc.run_job`` as the local backend, against the
workspace path, so progress, results and artifacts land in the same store: the cluster's nodes
must share the workspace filesystem and have Slimbench installed (`pip install -e .` of this checkout).
"""
from __future__ import annotations

from typing import Any

from .. import settings
from ..jobproc import run_job
from ..launch import ray as ray_tasks
from ..launch.ray import TaskHandle
from ..ray_auth import own_addresses, unauthenticated_remote  # noqa: F401 (re-exported)
from ..store import Store


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


class RayBackend:
    name = "ray"

    def __init__(self, store: Store, concurrency: int):
        self.store, self.concurrency = store, concurrency
        self.started_ray = ray_tasks.connect()
        self.env = {settings.HOME.name: str(store.root)}

    cluster_concurrency = staticmethod(ray_tasks.capacity)

    def start(self, job_id: str, slot: int, lease: str) -> TaskHandle:
        req = resources_for(self.store.get(job_id)["spec"])
        handle = ray_tasks.submit(_run_job_task, (job_id, str(self.store.root), int(req["num_cpus"]), lease),
                                  env=self.env, **req)
        self.store.add_event(job_id, {"phase": "scheduled", "backend": "ray", "task_id": handle.ref.task_id().hex(),
                                      **req}, lease=lease)
        return handle

    def close(self) -> None:
        if self.started_ray:
            ray_tasks.disconnect()
