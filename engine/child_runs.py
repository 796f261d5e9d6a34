"""A search's child runs, several at once: each in a process of its own on this machine, or as a Ray task.

The search (``methods.autocompress``) asks the runner's ``ctx.start_child`` for a child; the runner
hands in what the child runs (a function of its own that calls ``run_spec``), and this module only
decides where, on the backend the worker's setting names (``SLIMBENCH_BACKEND``), started as that
backend starts a job (``engine.launch``). Either way the child writes its row, events and artifacts into
the shared workspace; the search reads them from the store. A handle says whether the child is still
running and kills it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import settings
from .launch import local, ray
from .launch.local import ProcessHandle
from .launch.ray import TaskHandle


def where() -> str:
    """``ray`` where the worker's backend setting asks for Ray, else ``local``."""
    return "ray" if settings.backend() == "ray" else "local"


def start(target: Callable[..., int], args: tuple, threads: int, home: str, log: Path,
          gpus: int = 0) -> ProcessHandle | TaskHandle:
    """Run ``target(*args)`` (an exit status) beside this process with ``threads`` CPU threads (and, as a Ray
    task, ``gpus`` GPUs: a CUDA spec's); a local child's output (a crash before the run logs it) goes to ``log``."""
    env = {settings.HOME.name: home, "OMP_NUM_THREADS": str(threads), settings.JOB_THREADS.name: str(threads)}
    if where() == "ray":
        ray.connect()
        return ray.submit(target, args, num_cpus=threads, num_gpus=gpus, env=env)
    return local.start_interpreter(target, args, env, log)
