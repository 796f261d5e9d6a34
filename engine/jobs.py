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

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from . import layout, methods, procs, settings
from .devices import device_problem, gpu_count
from .errors import SpecError
from .spec import JobSpec
from .store import Store, cannot_write

RETRYABLE = ("interrupted", "failed", "cancelled")
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def default_concurrency() -> int:
    """One job per GPU; on CPU one job per 4 cores (at least one), each on its share of the threads
    (``backends.local``). Two 1-thread jobs at once won on a *loaded* 2-core box (``python -m bench.concurrency``),
    but a lone job then trains on one thread: the Quick tour's base, which every other row waits for, ran over
    7.5 min alone on 1 thread on the quiet box where it took 165 s on 2 (docs/BENCHMARKS.md, "Concurrency on CPU").
    SLIMBENCH_WORKER_CONCURRENCY=2 runs two at once."""
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
    from .validation import check_onnx_start, check_spec, check_start_classes
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
    parent = store.get(spec.model.from_run) if spec.model.from_run else None
    # a 3-class checkpoint queued against 10 classes failed only once the job had loaded its data
    check_start_classes(spec, ((parent or {}).get("record") or {}).get("num_classes"))
    check_onnx_start(spec, store)
    job_id = store.create(spec.to_dict(), state="queued", deps=refs)
    store.add_event(job_id, {"phase": "queued", "attempt": 1})
    return job_id


def cancel(job_id: str, store: Store | None = None) -> None:
    """A queued job is cancelled at once; a running one is asked to stop (its process polls the flag)."""
    store = store or Store()
    state = store.request_cancel(job_id, "cancelled before it started")
    if state is None:
        raise SpecError("job", f"no job {job_id!r} in {store.root}")
    if state not in ("queued", "running"):
        raise SpecError("job", f"job {job_id} is already {state}")


def retry(job_id: str, store: Store | None = None, *, autostart: bool | None = None) -> str:
    """Queue an interrupted, failed or cancelled job again under the same id (its log and events stay);
    starts a worker if none is alive, unless ``autostart`` is False."""
    store = store or Store()
    row = store.requeue(job_id, RETRYABLE, unless=_previous_attempt_lives)
    if row is None:
        raise SpecError("job", f"no job {job_id!r} in {store.root}")
    if row.get("refused"):
        raise SpecError("job", row["refused"])
    if row["state"] not in RETRYABLE:
        raise SpecError("job", f"job {job_id} is {row['state']}; only {', '.join(RETRYABLE)} jobs can be retried")
    store.add_event(job_id, {"phase": "queued", "attempt": (row["attempts"] or 0) + 1})
    with open(store.run_dir(job_id) / "log", "a", encoding="utf-8") as f:
        f.write(f"--- retry requested {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
    if _autostart(autostart):
        ensure_worker(store)
    return job_id


def matching(store: Store, *, experiment: str | None = None, group: str | None = None,
             states: Iterable[str] | None = None) -> list[str]:
    """Ids of the jobs of ``experiment`` / ``group`` (each where given) in ``states`` (all where None),
    oldest first: what a bulk cancel or retry of "all of experiment X" acts on."""
    return store.labelled_ids(experiment, group, tuple(states) if states else None)


def cancel_many(job_ids: Iterable[str], store: Store | None = None) -> dict[str, str | None]:
    """Cancel each of ``job_ids`` (see :func:`cancel`); job id -> None where it was cancelled or asked to
    stop, else why not. One job that cannot be cancelled does not stop the others."""
    store = store or Store()
    return {job_id: _why_not(cancel, job_id, store) for job_id in dict.fromkeys(job_ids)}


def retry_many(job_ids: Iterable[str], store: Store | None = None) -> dict[str, str | None]:
    """Queue each of ``job_ids`` again (see :func:`retry`), parents before the jobs that start from them
    (by submission); job id -> None where it was queued, else why not. One worker is started at most."""
    store = store or Store()
    rows = {j: store.get(j) for j in dict.fromkeys(job_ids)}
    order = sorted(rows, key=lambda j: (rows[j] or {}).get("created") or 0)
    out = {j: _why_not(retry, j, store, autostart=False) for j in order}
    if any(v is None for v in out.values()) and _autostart(None):
        ensure_worker(store)
    return out


def _why_not(action: Callable[..., Any], job_id: str, store: Store, **kw: Any) -> str | None:
    try:
        action(job_id, store, **kw)
    except SpecError as e:  # its message names the field ("job: ..."): the caller names the job
        return str(e).removeprefix(f"{e.field}: ")
    return None


def _previous_attempt_lives(row: dict[str, Any]) -> str | None:
    """Why job ``row`` cannot be retried yet: the process of its last attempt still runs here (it was
    marked interrupted from elsewhere, e.g. by a reader on another host, while it was stalled). A job
    its worker ended has no lease left: its process is known to be gone."""
    if row["state"] == "interrupted" and row["lease"] and _process_lives(row):
        return (f"job {row['id']} was marked {row['state']}, but the process of its last attempt (pid {row['pid']}) "
                "is still running: wait for it to end, or stop it, then retry")
    return None


def _process_lives(row: dict[str, Any]) -> bool:
    """The process that holds job ``row`` runs on this host and is alive (a stopped one too). On another
    host it cannot be asked, nor before the job's process has recorded itself: heartbeats decide (and
    the lease keeps a later attempt's run folder safe from it)."""
    return bool(row.get("pid")) and row.get("host") == procs.host() and procs.alive(row["pid"], row.get("pid_start"))


def claim(store: Store, worker_id: str) -> tuple[str, str] | None:
    """Atomically take the oldest runnable queued job (its parent and the runs its parameters name
    done, or none) for ``worker_id``; returns (job id, lease token). Jobs one of whose needed runs
    ended failed/cancelled are failed here, with that run's reason."""
    return store.claim(worker_id, _orphan_reason)


def _orphan_reason(field: str, dep: str, dep_state: str, dep_error: str | None) -> str:
    what = "parent run" if field == "model.from_run" else "run"
    return f"{field}: {what} {dep} ended {dep_state}" + (f" ({dep_error})" if dep_error else "")


def recover_stale(store: Store) -> list[str]:
    """Mark jobs with no heartbeat for ``settings.stale_s()`` interrupted, unless their process is alive
    on this host (a stalled or suspended job is not dead: marking it would let a retry run it twice);
    drop dead workers' rows. The runs marked lose their half-written artifacts (model.pt, model.onnx).

    A run in the foreground (``engine run``, no worker) beats by itself; rows from before it did
    (no heartbeat at all) are not touched. On a full disk or a read-only workspace nothing is marked:
    readers go on reading.
    """
    silent = settings.stale_s()
    before = time.time() - silent
    try:
        dead = [r["id"] for r in store.stale_running(before) if not _process_lives(r)]
        ids = store.interrupt_stale(before, f"its worker or process stopped responding (no heartbeat for "
                                            f"{silent:.0f} s); retry it", job_ids=dead)
    except Exception as e:
        if cannot_write(e, store.root):
            return []
        raise
    for job_id in ids:
        layout.remove_artifacts(store.run_dir(job_id))
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
    return store.live_workers(time.time() - settings.stale_s())


def ensure_worker(store: Store | None = None) -> bool:
    """Start a detached ``python -m engine worker`` if no worker is alive; True if one was started.

    The placeholder row is inserted in the same transaction that checked for live workers, so
    concurrent callers (dashboard reruns, several CLIs) start exactly one.
    """
    store = store or Store()
    recover_stale(store)
    now = time.time()
    worker_id = f"{socket.gethostname()}-{os.getpid()}-{int(now * 1000) % 10**8}"
    if not store.put_worker(worker_id, pid=None, host=socket.gethostname(), backend=settings.backend(), concurrency=None,
                            now=now, unless_alive_since=now - settings.stale_s()):
        return False
    log = open(store.root / "worker.log", "ab")
    env = {**os.environ, settings.HOME.name: str(store.root), settings.WORKER_ID.name: worker_id}
    idle = settings.worker_idle_exit()
    proc = subprocess.Popen([sys.executable, "-m", "engine", "worker", "--exit-when-idle", idle],
                            cwd=PACKAGE_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    store.set_worker_pid(worker_id, proc.pid)
    return True


def worker_status(store: Store | None = None) -> dict[str, Any]:
    store = store or Store()
    recover_stale(store)
    workers = live_workers(store)
    counts = store.count_by_state(("queued", "running"))
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
    queued jobs waiting on a run they need, ``waiting_for`` (its id) and ``waiting`` (what to tell the
    user: a run that was interrupted holds its dependants until it is retried, so it comes first)."""
    store = store or Store()
    recover_stale(store)
    rows = store.list(state=tuple(states) if states else None, limit=limit)
    waiting = store.waiting_for()
    stuck = store.waiting_for(("interrupted",))
    last = store.last_events(r["id"] for r in rows)
    for r in rows:
        r["last_event"] = last.get(r["id"])
        r["waiting_for"] = stuck.get(r["id"]) or waiting.get(r["id"])
        r["waiting"] = waiting_text(r["waiting_for"], interrupted=r["id"] in stuck)
    return rows


def rows_of(job_ids: Iterable[str], store: Store | None = None) -> list[dict[str, Any]]:
    """The rows of ``job_ids`` (those that exist, in that order), each with ``last_event`` as in
    :func:`list_jobs`: one launched plan's jobs, however many others the workspace holds."""
    store = store or Store()
    rows = [r for r in (store.get(j) for j in dict.fromkeys(job_ids)) if r is not None]
    last = store.last_events(r["id"] for r in rows)
    for r in rows:
        r["last_event"] = last.get(r["id"])
    return rows


def waiting_text(dep: str | None, *, interrupted: bool) -> str | None:
    if dep is None:
        return None
    if interrupted:
        return f"waiting for {dep}, which was interrupted: retry it or cancel this"
    return f"waiting for {dep}"


def stuck_jobs(store: Store) -> dict[str, str]:
    """Queued jobs no worker can start until the user acts: a run they need was interrupted. Job id ->
    what to tell the user."""
    return {job: waiting_text(dep, interrupted=True) for job, dep in store.waiting_for(("interrupted",)).items()}


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
