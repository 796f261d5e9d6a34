"""Process hygiene: a job process (or a DDP rank, or the forkserver) never outlives the process that started it."""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import threading
import time


def set_parent_death_signal() -> None:
    """Linux: SIGKILL this process when its parent dies."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def die_with_parent(parent_pid: int, worker_pid: int | None = None) -> None:
    """A job must not outlive its worker (it would finish a job already marked interrupted)."""
    set_parent_death_signal()

    def gone() -> bool:
        if os.getppid() != parent_pid:
            return True
        try:
            if worker_pid:
                os.kill(worker_pid, 0)
        except ProcessLookupError:
            return True
        return False

    def watch() -> None:
        while not gone():
            time.sleep(0.5)
        os._exit(137)
    if gone():
        os._exit(137)
    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def death_reason(returncode: int) -> str:
    """Why a job process ended without recording an outcome, and what to do, from its exit status."""
    if returncode == -signal.SIGKILL:
        # Nothing in Slimbench SIGKILLs a job it has not been asked to cancel; the kernel's OOM killer does.
        return ("the job process was killed (signal 9, SIGKILL), most likely by the kernel's out-of-memory "
                "killer: the job needed more memory than the machine had. Before retrying, lower "
                "data.image_size, data.batch_size or train.devices, or use fewer images")
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"the job process died (killed by signal {-returncode}, {name}); retry it"
    return f"the job process died (exit code {returncode}); retry it"


def host() -> str:
    return socket.gethostname()


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, Linux), which tells it from a later process
    given the same pid; None where unknown (no such process, or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19]) if len(fields) > 19 else None  # field 22 of stat; fields[0] is field 3


def alive(pid: int, started: int | None) -> bool:
    """Process ``pid`` of this host lives (stopped counts, a zombie does not) and, when ``started`` is
    known, is the one that started then, not a later process with the same pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return not sys.platform.startswith("linux")  # no /proc to ask: the signal said it exists
    if fields[0] == b"Z":
        return False
    return started is None or int(fields[19]) == started
