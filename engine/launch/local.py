"""A run in a process of its own on this machine, leading a process group of its own: killing the group
kills what the run started too (a DDP job's extra ranks, a search's trials)."""
from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Callable

from ..procs import die_with_parent


class ProcessHandle:
    """A started ``multiprocessing`` process (the job queue's, forked from its forkserver) or
    ``subprocess`` one (a child run's fresh interpreter)."""

    def __init__(self, proc: BaseProcess | subprocess.Popen):
        self.proc = proc

    def poll(self) -> int | None:
        return self.proc.exitcode if isinstance(self.proc, BaseProcess) else self.proc.poll()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            self.proc.kill()
        if isinstance(self.proc, BaseProcess):
            self.proc.join(10)
        else:
            self.proc.wait(10)


def start_interpreter(target: Callable[..., int], args: tuple, env: dict[str, str], log: Path) -> ProcessHandle:
    """``target(*args)`` (a module-level function returning an exit status, its arguments JSON) in a fresh
    interpreter that dies with this process; its output (a crash before the run logs it) goes to ``log``.
    Not a fork of this one (its threads, its torch state) nor a multiprocessing child (which would import
    the caller's ``__main__`` again): the same engine, found through PYTHONPATH."""
    here = str(Path(__file__).resolve().parents[2])
    paths = [here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != here]
    cmd = [sys.executable, "-m", __name__, str(os.getpid()), f"{target.__module__}:{target.__name__}",
           json.dumps(list(args))]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env={**os.environ, **env, "PYTHONPATH": os.pathsep.join(paths)},
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return ProcessHandle(proc)


def _main(argv: list[str]) -> int:
    """``python -m engine.launch.local PARENT_PID MODULE:FUNCTION ARGS_JSON``: the fresh interpreter's entry."""
    parent_pid, target, args = int(argv[0]), argv[1], json.loads(argv[2])
    die_with_parent(parent_pid)
    module, name = target.split(":")
    return int(getattr(importlib.import_module(module), name)(*args))


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
