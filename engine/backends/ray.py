"""Each claimed job as a Ray task on a cluster (``SLIMBENCH_BACKEND=ray``, ``RAY_ADDRESS``).

The worker still owns the queue: it claims jobs, heartbeats them and enforces cancels; Ray only
decides where each job runs, with a resource request from its spec (one GPU per device when the
spec asks for CUDA). The task runs the same ``jobproc.run_job`` as the local backend, against the
workspace path, so progress, results and artifacts land in the same store: the cluster's nodes
must share the workspace filesystem and have Slimbench installed (`pip install -e .` of this checkout).
"""
from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any
from urllib.parse import urlsplit

import psutil

from .. import settings
from ..errors import SpecError
from ..jobproc import run_job
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


def unauthenticated_remote(address: str | None, auth_mode: str | None) -> str | None:
    """Why connecting to ``address`` (``RAY_ADDRESS``) is unsafe, or None. A head that is not on this
    machine is reached over the network, where anyone who can reach its port may run code on the
    cluster unless Ray's token authentication is on (``RAY_AUTH_MODE=token``)."""
    if not address or address.strip().lower() in ("auto", "local") or (auth_mode or "").lower() == "token":
        return None
    text = address.strip()
    host = urlsplit(text if "://" in text else f"//{text}").hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback or host in own_addresses()
    except ValueError:  # a host name other than localhost: may resolve anywhere
        local = False
    if local:
        return None
    return (f"RAY_ADDRESS {address} is not on this machine and Ray's token authentication is off: anyone who "
            "can reach that port could run code on the cluster. Start the head with RAY_AUTH_MODE=token and set "
            "RAY_AUTH_MODE=token (with the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN) here too; "
            "see README, Running on a Ray cluster")


def own_addresses() -> set[str]:
    """This machine's interface addresses: a head started here by ``ray.init()`` announces one of them."""
    return {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family in (socket.AF_INET, socket.AF_INET6)}


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
