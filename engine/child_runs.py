"""A search's child runs, several at once: each in a process of its own on this machine, or as a Ray task.

The search (``methods.autocompress``) asks the runner's ``ctx.start_child`` for a child; the runner
hands in what the child runs (a function of its own that calls ``run_spec``), and this module only
decides where: a fresh interpreter (own session, dying with the search that started it) or, with
``SLIMBENCH_BACKEND=ray``, a Ray task with one CPU on the cluster the process is connected to (or
connects to through ``RAY_ADDRESS``; an unauthenticated remote head is refused as the worker refuses
it). Either way the child writes its row, events and artifacts into the shared workspace; the search
reads them from the store. A handle says whether the child is still running and kills it.
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from . import settings
from .errors import SpecError
from .procs import die_with_parent
from .ray_auth import unauthenticated_remote


class ProcessChild:
    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def poll(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            self.proc.kill()
        self.proc.wait(10)


class RayChild:
    def __init__(self, ref: Any):
        self.ref = ref

    def poll(self) -> int | None:
        import ray
        ready, _ = ray.wait([self.ref], timeout=0)
        if not ready:
            return None
        try:
            return int(ray.get(self.ref))
        except ray.exceptions.RayError:   # cancelled, or its worker or node died
            return -9

    def kill(self) -> None:
        import ray
        ray.cancel(self.ref, force=True)


def _main(argv: list[str]) -> int:
    """``python -m engine.child_runs SEARCH_PID MODULE:FUNCTION ARGS_JSON``: the child's own interpreter."""
    search_pid, target, args = int(argv[0]), argv[1], json.loads(argv[2])
    die_with_parent(search_pid)
    module, name = target.split(":")
    return int(getattr(importlib.import_module(module), name)(*args))


def where() -> str:
    """``ray`` where the worker's backend setting asks for Ray, else ``local``."""
    return "ray" if settings.backend() == "ray" else "local"


def _connect_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SpecError(settings.BACKEND.name, "ray is not installed: pip install -r requirements-ray.txt") from None
    if not ray.is_initialized():   # inside a Ray task (a search the Ray backend runs) it already is
        address = os.environ.get("RAY_ADDRESS") or None
        if problem := unauthenticated_remote(address, os.environ.get("RAY_AUTH_MODE")):
            raise SpecError("RAY_AUTH_MODE", problem)
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray


def start(target: Callable[..., int], args: tuple, threads: int, home: str, log: Path,
          gpus: int = 0) -> ProcessChild | RayChild:
    """Run ``target(*args)`` (an exit status) beside this process with ``threads`` CPU threads (and, as a Ray
    task, ``gpus`` GPUs: a CUDA spec's); a local child's output (a crash before the run logs it) goes to ``log``."""
    env = {settings.HOME.name: home, "OMP_NUM_THREADS": str(threads), settings.JOB_THREADS.name: str(threads)}
    if where() == "ray":
        ray = _connect_ray()
        task = ray.remote(max_retries=0)(target)
        return RayChild(task.options(num_cpus=threads, num_gpus=gpus, runtime_env={"env_vars": env}).remote(*args))
    # A fresh interpreter, not a fork of this one (its threads, its torch state) nor a multiprocessing child
    # (which would import the caller's __main__ again): the same engine, found through PYTHONPATH.
    here = str(Path(__file__).resolve().parent.parent)
    paths = [here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != here]
    cmd = [sys.executable, "-m", "engine.child_runs", str(os.getpid()), f"{target.__module__}:{target.__name__}",
           json.dumps(list(args))]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env={**os.environ, **env, "PYTHONPATH": os.pathsep.join(paths)},
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)   # its own group: killing it takes what it started too
    return ProcessChild(proc)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
