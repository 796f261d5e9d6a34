"""The worker: claims queued jobs from the store and runs each in a process of its own.

``python -m engine worker`` runs :class:`Worker`. The job process itself (what runs the job and
dies with its worker) is ``engine.jobproc``; the backend starts it. The worker stays torch-free.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from . import backends, jobs, procs, settings
from .store import Store, is_disk_full

log = logging.getLogger("slimbench.worker")
POLL_S = 0.2
CANCEL_GRACE_S = 3.0  # a job asked to stop that has not stopped by itself is killed after this


@dataclass
class Running:
    handle: Any
    started: float
    cancel_seen: float | None = None
    killed_at: float | None = None  # when a stuck cancel was escalated to a kill (logged once)
    meta: dict = field(default_factory=dict)


class Worker:
    def __init__(self, store: Store | None = None, concurrency: int | None = None, backend: str | None = None,
                 worker_id: str | None = None, exit_when_idle: float | None = None):
        self.store = store or Store()
        self.backend_name = backend or settings.backend()
        self.backend = backends.get(self.backend_name, self.store, concurrency or jobs.default_concurrency())
        # explicit > SLIMBENCH_WORKER_CONCURRENCY > what a cluster backend can hold > this machine's hardware
        cluster = getattr(self.backend, "cluster_concurrency", None)
        configured = None if concurrency else settings.worker_concurrency()
        self.concurrency = (concurrency or configured or (cluster() if cluster else None) or jobs.default_concurrency())
        self.backend.concurrency = self.concurrency
        if concurrency is None and configured is None and \
                hasattr(self.backend, "cluster_concurrency"):  # a cluster holds more than this machine
            self.concurrency = self.backend.concurrency = self.backend.cluster_concurrency()
        self.id = worker_id or settings.take_worker_id() or \
            f"{socket.gethostname()}-{os.getpid()}-{int(time.time() * 1000) % 10**8}"
        self.exit_when_idle = exit_when_idle
        self.running: dict[str, Running] = {}
        self.stopping = False
        # jobs this worker heartbeats (claimed, starting or running) -> the lease of its claim
        self.claimed: dict[str, str] = {}
        self._stop_beat = threading.Event()

    # -- lifecycle --------------------------------------------------------------------------------
    def register(self) -> None:
        """Our first heartbeat writes our worker row (over the placeholder of ``jobs.ensure_worker``)."""
        self.heartbeat(time.time())
        log.info("worker %s (pid %d) on %s: %d concurrent job(s), backend %s", self.id, os.getpid(),
                 self.store.root, self.concurrency, self.backend_name)

    def run(self) -> int:
        self.register()
        beat = threading.Thread(target=self._beat_loop, daemon=True, name="heartbeat")
        beat.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        idle_since = time.monotonic()
        try:
            while not self.stopping:
                self.tick()
                if self.running:
                    idle_since = time.monotonic()
                elif self.exit_when_idle is not None and time.monotonic() - idle_since > self.exit_when_idle:
                    log.info("idle for %.0f s: exiting", self.exit_when_idle)
                    break
                time.sleep(POLL_S)
        finally:
            self._stop_beat.set()
            beat.join()
            self.shutdown()
        return 0

    def _beat_loop(self) -> None:
        """Heartbeats on their own thread, so a slow job start or a busy store never makes us look dead."""
        while not self._stop_beat.wait(settings.heartbeat_s()):
            try:
                self.heartbeat(time.time())
                jobs.recover_stale(self.store)
            except Exception as e:  # e.g. the store is locked for longer than its timeout: try again next beat
                log.warning("heartbeat failed: %s", e)

    def tick(self) -> None:
        """One round: reap finished jobs, enforce cancels, fill free slots."""
        self.reap()
        self.enforce_cancels()
        while len(self.running) < self.concurrency and not self.stopping:
            claim = jobs.claim(self.store, self.id)
            if claim is None:
                break
            job_id, lease = claim
            self.claimed[job_id] = lease
            self.start(job_id, lease)

    def heartbeat(self, now: float) -> None:
        """Our row and our jobs' rows (those we still hold: a job requeued meanwhile is not ours to beat);
        the upsert also re-registers us if the row was dropped as stale (e.g. after a long suspend)."""
        self.store.put_worker(self.id, pid=os.getpid(), host=socket.gethostname(), backend=self.backend_name,
                              concurrency=self.concurrency, now=now, leases=dict(self.claimed))

    def start(self, job_id: str, lease: str) -> None:
        slot = next(i for i in range(self.concurrency) if i not in {r.meta.get("slot") for r in self.running.values()})
        log.info("job %s: starting (slot %d)", job_id, slot)
        try:
            handle = self.backend.start(job_id, slot, lease)
        except Exception as e:  # the backend could not launch it: the job failed, the worker goes on
            self._finish(job_id, "failed", f"could not start the job: {type(e).__name__}: {e}")
            return
        self.running[job_id] = Running(handle, time.monotonic(), meta={"slot": slot})

    def reap(self) -> None:
        for job_id, r in list(self.running.items()):
            code = r.handle.poll()
            if code is None:
                continue
            del self.running[job_id]
            row = self.store.get(job_id)
            if row is None or row["state"] != "running" or row["lease"] != self.claimed.get(job_id):
                self.claimed.pop(job_id, None)
                log.info("job %s: %s", job_id, ("held by a later attempt" if row["state"] == "running" else row["state"])
                         if row else "gone")
                continue
            # The process ended without recording an outcome: it was killed or crashed hard.
            if r.cancel_seen is not None or row["cancel_requested"]:
                self._finish(job_id, "cancelled", "cancelled by request")
            else:
                self._finish(job_id, "interrupted", procs.death_reason(code))

    def enforce_cancels(self) -> None:
        if not self.running:
            return
        asked = self.store.cancel_requested(self.running)
        now = time.monotonic()
        for job_id in asked:
            r = self.running[job_id]
            if r.cancel_seen is None:
                r.cancel_seen = now
            elif r.killed_at is None and now - r.cancel_seen > CANCEL_GRACE_S:  # stuck outside the step loop
                log.info("job %s: did not stop within %.0f s of the cancel; killing it", job_id, CANCEL_GRACE_S)
                r.killed_at = now
                r.handle.kill()
            elif r.killed_at is not None and now - r.killed_at > CANCEL_GRACE_S:  # a kill lost (e.g. by Ray)
                r.killed_at = now
                r.handle.kill()

    def _finish(self, job_id: str, state: str, reason: str) -> None:
        """End a job this worker holds (by its claim's lease) that did not record its own end."""
        lease = self.claimed.pop(job_id, None)
        try:
            changed = self.store.finish_running(job_id, state, reason, lease)
        except Exception as e:
            if not is_disk_full(e, self.store.root) or not self.store.release_reserve():
                raise
            changed = self.store.finish_running(job_id, state, reason, lease)  # the reserve made room for it
        # not changed: the job recorded its own end first (e.g. done just before a shutdown), or a later
        # attempt holds it now: either way the row and the run folder are not ours to touch
        if not changed:
            return
        self.store.remove_artifacts(job_id)  # nothing half-done stays visible
        jobs._append_log(self.store, job_id, f"{state}: {reason}")
        log.info("job %s: %s (%s)", job_id, state, reason)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.stopping = True

    def shutdown(self) -> None:
        """Stopping the worker stops its jobs: they become interrupted and can be retried."""
        for job_id, r in list(self.running.items()):
            r.handle.kill()
            self._finish(job_id, "interrupted", "the worker was stopped; retry it")
        self.running.clear()
        self.backend.close()
        self.store.remove_worker(self.id)
