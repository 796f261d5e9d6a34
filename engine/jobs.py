"""Durable background jobs: the queue lives in the store, a worker process runs it.

A queued job *is* a run row (state ``queued``, run id = job id), so a later job can name an
earlier one as ``model.from_run``; it waits until that parent is done and fails with a clear
reason if the parent failed or was cancelled. Every state change is one ``BEGIN IMMEDIATE``
transaction, so two workers never claim the same job and a crash never loses a recorded row.

Liveness is heartbeats: a worker refreshes its own row and the rows of the jobs it runs every
``settings.heartbeat_s()`` seconds; anyone reading the queue turns a ``running`` job whose
heartbeat is older than ``settings.stale_s()`` into ``interrupted`` (it can be retried).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from . import methods, settings
from .devices import device_problem, gpu_count
from .errors import SpecError
from .spec import JobSpec
from .store import Store

RETRYABLE = ("interrupted", "failed", "cancelled")
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def default_concurrency() -> int:
    """One job per GPU; on CPU one job per 4 cores (at least one), so jobs never fight for threads."""
    configured = settings.worker_concurrency()
    if configured:
        return configured
    gpus = gpu_count()
    if gpus:
        return gpus
    return max(1, (os.cpu_count() or 1) // 4)


# -- queue operations ------------------------------------------------------------------------------
def submit(spec: dict | JobSpec, store: Store | None = None, *, autostart: bool | None = None) -> str:
    """Validate and queue ``spec``; returns the job id. Starts a worker if none is alive, unless
    ``autostart`` is False (default: on unless SLIMBENCH_NO_AUTOSTART=1)."""
    store = store or Store()
    job_id = _enqueue(spec, store)
    if _autostart(autostart):
        ensure_worker(store)
    return job_id


def _autostart(flag: bool | None) -> bool:
    return flag if flag is not None else not settings.no_autostart()


def submit_many(specs: Iterable[dict | JobSpec], store: Store | None = None) -> list[str]:
    """Validate all specs first (none is queued if one is invalid), then queue them in order."""
    from .validation import check_spec  # lazy: see _enqueue
    store = store or Store()
    checked = [check_spec(s) for s in specs]
    ids = [_enqueue(s, store) for s in checked]
    if ids and _autostart(None):
        ensure_worker(store)
    return ids


def start_problem(store: Store, run_id: str) -> str | None:
    """Why no job can start from (or learn from) run ``run_id``; None when one can. A run not yet
    finished counts by its method (the job waits for it)."""
    row = store.get(run_id)
    if row is None:
        return f"no run {run_id!r} in {store.root}"
    if methods.makes_torch_model((row.get("spec") or {}).get("method") or {}):
        return None
    return (f"run {run_id} makes an INT8 ONNX Runtime model, which cannot be trained or compressed further; "
            "start from the run it quantises")


def _enqueue(spec: dict | JobSpec, store: Store) -> str:
    # lazy: the registries import torch, and the worker and `engine jobs` use this module for the queue alone
    from .validation import check_spec
    spec = check_spec(spec)
    if spec.train.device.startswith("cuda") and settings.backend() == "local":
        # the local worker runs here, so a missing GPU is known now, not when the job starts; a Ray
        # cluster's machines may have what this one lacks
        problem = device_problem(spec.train.device)
        if problem:
            raise SpecError("train.device", problem)
    refs = methods.run_refs({"name": spec.method.name, "params": spec.method.params})
    for field, run_id in [("model.from_run", spec.model.from_run)] + refs:
        problem = run_id and start_problem(store, run_id)
        if problem:
            raise SpecError(field, problem)
    job_id = store.create(spec.to_dict(), state="queued", deps=refs)
    store.add_event(job_id, {"phase": "queued", "attempt": 1})
    return job_id


def cancel(job_id: str, store: Store | None = None) -> None:
    """A queued job is cancelled at once; a running one is asked to stop (its process polls the flag)."""
    store = store or Store()
    now = time.time()
    with store.transaction() as db:
        row = db.execute("SELECT state FROM runs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise SpecError("job", f"no job {job_id!r} in {store.root}")
        if row["state"] == "queued":
            db.execute("UPDATE runs SET state='cancelled', cancel_requested=1, finished=?, error=? WHERE id=?",
                       (now, "cancelled before it started", job_id))
        elif row["state"] == "running":
            db.execute("UPDATE runs SET cancel_requested=1 WHERE id=?", (job_id,))
        else:
            raise SpecError("job", f"job {job_id} is already {row['state']}")


def retry(job_id: str, store: Store | None = None) -> str:
    """Queue an interrupted, failed or cancelled job again under the same id (its log and events stay)."""
    store = store or Store()
    with store.transaction() as db:
        row = db.execute("SELECT state, attempts FROM runs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise SpecError("job", f"no job {job_id!r} in {store.root}")
        if row["state"] not in RETRYABLE:
            raise SpecError("job", f"job {job_id} is {row['state']}; only {', '.join(RETRYABLE)} jobs can be retried")
        db.execute("UPDATE runs SET state='queued', cancel_requested=0, error=NULL, record=NULL, worker=NULL, "
                   "pid=NULL, heartbeat=NULL, started=NULL, finished=NULL WHERE id=?", (job_id,))
    store.add_event(job_id, {"phase": "queued", "attempt": (row["attempts"] or 0) + 1})
    with open(store.run_dir(job_id) / "log", "a", encoding="utf-8") as f:
        f.write(f"--- retry requested {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
    if _autostart(None):
        ensure_worker(store)
    return job_id


# A queued job's parent and the runs its parameters name (deps), with the spec field naming each.
_NEEDS = ("SELECT r.id, p.id AS dep, 'model.from_run' AS field, p.state AS dstate, p.error AS derror, "
          "p.created AS dcreated, p.rowid AS drow FROM runs r "
          "JOIN runs p ON p.id=r.parent WHERE r.state='queued' UNION ALL "
          "SELECT r.id, q.id, d.field, q.state, q.error, q.created, q.rowid FROM runs r JOIN deps d ON d.run_id=r.id "
          "JOIN runs q ON q.id=d.dep_id WHERE r.state='queued'")


def claim(store: Store, worker_id: str) -> str | None:
    """Atomically take the oldest runnable queued job (its parent and the runs its parameters name
    done, or none) for ``worker_id``. Jobs one of whose needed runs ended failed/cancelled are failed
    here, with that run's reason."""
    now = time.time()
    with store.transaction() as db:
        orphans = db.execute(f"SELECT * FROM ({_NEEDS}) WHERE dstate IN ('failed','cancelled')").fetchall()
        for o in orphans:
            what = "parent run" if o["field"] == "model.from_run" else "run"
            reason = f"{o['field']}: {what} {o['dep']} ended {o['dstate']}" + (
                f" ({o['derror']})" if o["derror"] else "")
            db.execute("UPDATE runs SET state='failed', error=?, finished=? WHERE id=? AND state='queued'",
                       (reason[:500], now, o["id"]))
        row = db.execute(
            f"SELECT r.id FROM runs r WHERE r.state='queued' AND r.id NOT IN "
            f"(SELECT id FROM ({_NEEDS}) WHERE dstate != 'done') ORDER BY r.created, r.rowid LIMIT 1").fetchone()
        if row is None:
            return None
        db.execute("UPDATE runs SET state='running', worker=?, heartbeat=?, pid=NULL, error=NULL WHERE id=?",
                   (worker_id, now, row["id"]))
        return row["id"]


def recover_stale(store: Store) -> list[str]:
    """Mark jobs with no heartbeat for ``settings.stale_s()`` interrupted; drop dead workers' rows.

    A run in the foreground (``engine run``, no worker) beats by itself; rows from before it did
    (no heartbeat at all) are not touched.
    """
    now, limit = time.time(), time.time() - settings.stale_s()
    stale = ("state='running' AND ((worker IS NOT NULL AND COALESCE(heartbeat, 0) < ?) OR "
             "(worker IS NULL AND heartbeat < ?))")
    with store.connect() as db:  # the common case (nothing stale) costs one read, no write lock
        if not db.execute(f"SELECT 1 FROM runs WHERE {stale} UNION ALL SELECT 1 FROM workers WHERE heartbeat < ? "
                          "LIMIT 1", (limit, limit, limit)).fetchone():
            return []
    silent = f"{settings.stale_s():.0f}"
    with store.transaction() as db:
        ids = [r["id"] for r in db.execute(f"SELECT id FROM runs WHERE {stale}", (limit, limit)).fetchall()]
        for job_id in ids:
            db.execute("UPDATE runs SET state='interrupted', finished=?, error=? WHERE id=? AND state='running'",
                       (now, f"its worker or process stopped responding (no heartbeat for {silent} s); "
                             "retry it", job_id))
        db.execute("DELETE FROM workers WHERE heartbeat < ?", (limit,))
    for job_id in ids:
        _append_log(store, job_id, "interrupted: no heartbeat from its worker")
    return ids


def _append_log(store: Store, job_id: str, line: str) -> None:
    try:
        with open(store.run_dir(job_id) / "log", "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
    except OSError:
        pass


# -- workers -----------------------------------------------------------------------------------------
def live_workers(store: Store) -> list[dict[str, Any]]:
    with store.connect() as db:
        rows = db.execute("SELECT * FROM workers WHERE heartbeat >= ? ORDER BY started",
                          (time.time() - settings.stale_s(),)).fetchall()
    return [dict(r) for r in rows]


def ensure_worker(store: Store | None = None) -> bool:
    """Start a detached ``python -m engine worker`` if no worker is alive; True if one was started.

    The placeholder row is inserted in the same transaction that checked for live workers, so
    concurrent callers (dashboard reruns, several CLIs) start exactly one.
    """
    store = store or Store()
    recover_stale(store)
    now = time.time()
    worker_id = f"{socket.gethostname()}-{os.getpid()}-{int(now * 1000) % 10**8}"
    with store.transaction() as db:
        if db.execute("SELECT 1 FROM workers WHERE heartbeat >= ?", (now - settings.stale_s(),)).fetchone():
            return False
        db.execute("INSERT INTO workers (id, pid, host, started, heartbeat, concurrency, backend) "
                   "VALUES (?,?,?,?,?,?,?)",
                   (worker_id, None, socket.gethostname(), now, now, None, settings.backend()))
    log = open(store.root / "worker.log", "ab")
    env = {**os.environ, settings.HOME.name: str(store.root), settings.WORKER_ID.name: worker_id,
           "PYTHONPATH": os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")) if p)}
    idle = settings.worker_idle_exit()
    proc = subprocess.Popen([sys.executable, "-m", "engine", "worker", "--exit-when-idle", idle],
                            cwd=PACKAGE_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    with store.transaction() as db:
        db.execute("UPDATE workers SET pid=? WHERE id=? AND pid IS NULL", (proc.pid, worker_id))
    return True


def worker_status(store: Store | None = None) -> dict[str, Any]:
    store = store or Store()
    recover_stale(store)
    workers = live_workers(store)
    with store.connect() as db:
        counts = dict(db.execute("SELECT state, COUNT(*) FROM runs WHERE state IN ('queued','running') "
                                 "GROUP BY state").fetchall())
    newest = max(workers, key=lambda w: w["heartbeat"]) if workers else None
    return {"alive": bool(workers), "pid": newest["pid"] if newest else None,
            "heartbeat_age_s": round(time.time() - newest["heartbeat"], 2) if newest else None,
            "queued": counts.get("queued", 0), "running": counts.get("running", 0),
            # a worker just started on demand has not registered its concurrency yet: the default it will use
            "concurrency": sum(w["concurrency"] or 0 for w in workers) or default_concurrency(),
            "backend": newest["backend"] if newest else settings.backend(), "workers": len(workers)}


# -- reading -----------------------------------------------------------------------------------------
def list_jobs(store: Store | None = None, states: Iterable[str] | None = None,
              limit: int | None = None) -> list[dict[str, Any]]:
    """Store rows, newest first, each with ``last_event`` (latest progress event or None) and, for
    queued jobs waiting on an unfinished parent, ``waiting_for``."""
    store = store or Store()
    recover_stale(store)
    rows = store.list(state=tuple(states) if states else None, limit=limit)
    with store.connect() as db:
        # the earliest submitted needed run still to finish, per queued job (one that ended fails the
        # job instead); ids are not ordered within a second, so order by submission, not by id
        waiting = {r[0]: r[1] for r in db.execute(
            "SELECT id, dep FROM (SELECT id, dep, ROW_NUMBER() OVER (PARTITION BY id ORDER BY dcreated, drow) "
            f"AS k FROM ({_NEEDS}) WHERE dstate IN ('queued','running')) WHERE k=1")}
        for r in rows:
            ev = db.execute("SELECT seq, ts, data FROM events WHERE run_id=? ORDER BY seq DESC LIMIT 1",
                            (r["id"],)).fetchone()
            r["last_event"] = ({"seq": ev["seq"], "ts": ev["ts"], **json.loads(ev["data"])}
                               if ev else None)
            r["waiting_for"] = waiting.get(r["id"])
    return rows


def job_log(job_id: str, store: Store | None = None, tail: int = 200) -> str:
    store = store or Store()
    path = store.run_dir(job_id) / "log"
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - max(1, tail) * 400))  # enough bytes for `tail` ordinary lines
        text = f.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-tail:])
