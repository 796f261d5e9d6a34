"""The job-process side of the worker: what runs inside the process (or Ray task) of one claimed job.

A backend starts :func:`job_process` (local) or calls :func:`run_job` (Ray); ``run_job`` checks the
job's spec and calls ``runner.run_spec`` with a cancellation check that polls the store at most every
0.5 s. This module stays torch-free at import: the worker imports it (through its backend) only to
hand it to a new process, and the runner loads in that process.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable

from . import layout, procs, settings
from .errors import Cancelled, JobFailed, LeaseLost, SpecError
from .procs import die_with_parent
from .store import Store, disk_full_reason, is_disk_full


class StoreCancelFlag:
    """``cancelled()`` for the training loop: reads ``cancel_requested`` at most every ``interval`` s,
    and raises :class:`LeaseLost` as soon as this attempt no longer holds the job (``lease``), so an
    attempt that was stalled and retried meanwhile stops within ``interval`` s of resuming."""

    def __init__(self, store: Store, job_id: str, interval: float = 0.5, lease: str | None = None):
        self.store, self.job_id, self.interval, self.lease = store, job_id, interval, lease
        self._next, self._value = 0.0, False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self._value and now >= self._next:
            self._next = now + self.interval
            if self.lease is not None:
                self.store.check_lease(self.job_id, self.lease)
            self._value = self.job_id in self.store.cancel_requested([self.job_id])
        return self._value


def run_job(job_id: str, store: Store | None = None, cancelled: Callable[[], bool] | None = None,
            lease: str | None = None) -> int:
    """Run one claimed job in this process; the outcome is recorded in the store. Exit code 0/1.
    ``lease``: the claim's token; every write of the job checks it (none when a later attempt holds it)."""
    # lazy: torch and the registries load in the job process, never in the worker that imports this module
    import torch

    from .runner import run_spec

    store = store or Store()
    threads = settings.job_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        # from now on this process holds the job: while it lives, the job is not declared dead
        pid = os.getpid()
        store.update(job_id, lease=lease, pid=pid, host=procs.host(), pid_start=procs.start_time(pid))
        try:
            run_spec(store.get(job_id)["spec"], store, run_id=job_id, lease=lease,
                     cancelled=cancelled or StoreCancelFlag(store, job_id, lease=lease))
        except SpecError as e:  # run_spec's first check: valid when queued, but e.g. its checkpoint is gone now
            print(f"failed: {e}", flush=True)
            store.update(job_id, lease=lease, state="failed", error=str(e)[:500], finished=time.time())
            return 1
    except Cancelled:
        return 0
    except JobFailed as e:
        print(f"failed: {e}", flush=True)
        return 1
    except LeaseLost as e:
        print(f"stopped: {e}; this attempt wrote nothing more", flush=True)
        return 1
    except Exception as e:  # e.g. the disk filled before the run could record that it started
        if not is_disk_full(e, store.root):
            raise
        reason = disk_full_reason(e, store.run_dir(job_id))
        print(f"failed: {reason}", flush=True)
        store.end_without_result(job_id, "failed", reason, lease)
        return 1
    return 0


def job_process(root: str, job_id: str, env: dict[str, str], lease: str | None = None) -> None:
    """Entry of a local job process: own process group, output into the job's log, dies with the worker."""
    os.setsid()
    os.environ.update(env)
    die_with_parent(os.getppid(), settings.worker_pid())
    log_fd = os.open(Path(root) / "runs" / job_id / layout.LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    code = run_job(job_id, Store(root), lease=lease)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
