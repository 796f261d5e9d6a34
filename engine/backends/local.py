"""Each job in a process of its own on this machine (so a crash or OOM kills one job, not the worker).

Job processes are forked from a multiprocessing *forkserver* that has already imported torch and
the engine, so a job starts in milliseconds instead of paying seconds of imports each time. The
forkserver itself never touches CUDA or runs a job, so forking from it is safe.
"""
from __future__ import annotations

import multiprocessing
from multiprocessing import forkserver
import os

from .. import settings
from ..devices import gpu_count
from ..jobproc import job_process
from ..launch.local import ProcessHandle
from ..store import Store

PRELOAD = ["engine.backends.forkserver_guard", "engine.jobproc", "engine.runner", "engine.validation",
           "sklearn.datasets", "sklearn.metrics"]


class LocalBackend:
    name = "local"

    def __init__(self, store: Store, concurrency: int):
        self.store, self.concurrency = store, concurrency
        self.gpus = gpu_count()
        # CPU threads are split evenly between concurrent jobs so they never oversubscribe the cores.
        self.threads = max(1, (os.cpu_count() or 1) // max(1, concurrency))
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)
        forkserver.ensure_running()  # warm it up now (torch imports) rather than at the first job

    def job_env(self, slot: int) -> dict[str, str]:
        env = {settings.HOME.name: str(self.store.root), settings.WORKER_PID.name: str(os.getpid()),
               settings.JOB_THREADS.name: str(self.threads),
               "OMP_NUM_THREADS": str(self.threads)}
        if self.gpus and self.concurrency > 1:  # one job per GPU
            env["CUDA_VISIBLE_DEVICES"] = str(slot % self.gpus)
        return env

    def start(self, job_id: str, slot: int, lease: str) -> ProcessHandle:
        proc = self.ctx.Process(target=job_process, args=(str(self.store.root), job_id, self.job_env(slot), lease),
                                name=f"slimbench-job-{job_id}")
        proc.start()
        return ProcessHandle(proc)   # the job calls setsid: killing its group takes a DDP job's extra ranks too

    def close(self) -> None:
        pass
