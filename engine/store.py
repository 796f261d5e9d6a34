"""The workspace: a SQLite (WAL) store of runs/jobs and their result records, plus ``runs/<id>/``.

One row per run; a queued job *is* a run that has not started yet, so a later job can name
an earlier one as ``model.from_run`` before it finishes. States:
queued -> running -> done | failed | cancelled | interrupted.

Every SQL statement of the project is a method here; ``jobs`` and ``worker`` decide what to do, and
when, and what reason a row records.
"""
from __future__ import annotations

import json
import re
import secrets
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from . import layout, settings

STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
FINAL_STATES = ("done", "failed", "cancelled", "interrupted")
RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    name TEXT,
    method TEXT,
    arch TEXT,
    dataset TEXT,
    parent TEXT,
    spec TEXT NOT NULL,
    record TEXT,
    error TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    pid INTEGER,
    heartbeat REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_state ON runs(state, created);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    ts REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, seq);
-- Runs a queued job needs besides its parent (a distillation teacher, a sensitivity analysis):
-- it waits for them too, and fails when one of them ends failed or cancelled.
CREATE TABLE IF NOT EXISTS deps (
    run_id TEXT NOT NULL,
    dep_id TEXT NOT NULL,
    field TEXT NOT NULL,
    PRIMARY KEY (run_id, dep_id)
);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    pid INTEGER,
    host TEXT,
    started REAL NOT NULL,
    heartbeat REAL NOT NULL,
    concurrency INTEGER,
    backend TEXT
);
"""


def workspace_root() -> Path:
    return settings.home()


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def check_run_id(run_id: str) -> str:
    """Run ids become folder names: only letters, digits, '-' and '_' (no path traversal)."""
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        raise ValueError(f"invalid run id {run_id!r}")
    return run_id


class Store:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).resolve() if root else workspace_root()
        self.runs_dir = self.root / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "slimbench.db"
        with self.connect() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=30000")
            db.row_factory = sqlite3.Row
            yield db
        finally:
            db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: one writer at a time, so claims and state changes never race."""
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    # -- runs -----------------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / check_run_id(run_id)

    def create(self, spec: dict[str, Any], state: str = "queued", run_id: str | None = None,
               parent: str | None = None, deps: list[tuple[str, str]] = (), created: float | None = None) -> str:
        """A new run row; ``deps``: (field, run id) of other runs it needs, written in the same
        transaction so that no worker can claim the job before they are known. ``created`` (default
        now) orders the run among the others; synthetic benchmark rows give their own."""
        run_id = check_run_id(run_id or new_run_id())
        model = spec.get("model", {})
        with self.transaction() as db:
            db.execute(
                "INSERT INTO runs (id, state, name, method, arch, dataset, parent, spec, created) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                (run_id, state, spec.get("name"), spec.get("method", {}).get("name"), model.get("arch"),
                 spec.get("data", {}).get("name"), parent or model.get("from_run"), json.dumps(spec),
                 time.time() if created is None else created))
            db.executemany("INSERT OR IGNORE INTO deps (run_id, dep_id, field) VALUES (?,?,?)",
                           [(run_id, dep, field) for field, dep in deps])
        self.run_dir(run_id).mkdir(parents=True, exist_ok=True)
        return run_id

    def remove_artifacts(self, run_id: str) -> None:
        """Drop a run's result files and temp files, so a run that did not finish shows none."""
        layout.remove_artifacts(self.run_dir(run_id))

    def update(self, run_id: str, **fields: Any) -> None:
        allowed = {"state", "record", "error", "started", "finished", "attempts", "worker", "pid", "heartbeat",
                   "cancel_requested", "arch", "name"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"cannot update {bad}")
        if "state" in fields and fields["state"] not in STATES:
            raise ValueError(f"unknown state {fields['state']!r}")
        if "record" in fields and not isinstance(fields["record"], (str, type(None))):
            fields["record"] = json.dumps(fields["record"])
        cols = ", ".join(f"{k}=?" for k in fields)
        with self.transaction() as db:
            db.execute(f"UPDATE runs SET {cols} WHERE id=?", (*fields.values(), run_id))

    def get(self, run_id: str) -> dict[str, Any] | None:
        with self.connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return _row(row) if row else None

    def list(self, state: str | tuple[str, ...] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        q, args = "SELECT * FROM runs", []
        if state:
            states = (state,) if isinstance(state, str) else tuple(state)
            q += f" WHERE state IN ({','.join('?' * len(states))})"
            args += list(states)
        q += " ORDER BY created DESC"
        if limit:
            q += f" LIMIT {int(limit)}"
        with self.connect() as db:
            return [_row(r) for r in db.execute(q, args).fetchall()]

    def children(self, run_id: str) -> list[dict[str, Any]]:
        with self.connect() as db:
            rows = db.execute("SELECT * FROM runs WHERE parent=? ORDER BY created", (run_id,)).fetchall()
        return [_row(r) for r in rows]

    def done_version(self) -> tuple[int, float | None]:
        """(number of finished runs, the latest finish): a cheap fingerprint that changes when one is added."""
        with self.connect() as db:
            return tuple(db.execute("SELECT COUNT(*), MAX(finished) FROM runs WHERE state='done'").fetchone())

    def count_by_state(self, states: Iterable[str]) -> dict[str, int]:
        states = tuple(states)
        with self.connect() as db:
            return dict(db.execute(f"SELECT state, COUNT(*) FROM runs WHERE state IN ({_marks(states)}) "
                                   "GROUP BY state", states).fetchall())

    # -- the queue: every state change is one BEGIN IMMEDIATE transaction -------------------------
    def claim(self, worker_id: str, orphan_reason: Callable[[str, str, str, str | None], str]) -> str | None:
        """Take the oldest queued job whose needed runs (parent, deps) are all done, or that needs none,
        for ``worker_id``; None if there is none. In the same transaction every queued job one of whose
        needed runs ended failed or cancelled is failed, with the error
        ``orphan_reason(field, dep_id, dep_state, dep_error)``."""
        now = time.time()
        with self.transaction() as db:
            for o in db.execute(f"SELECT * FROM ({_NEEDS}) WHERE dstate IN ('failed','cancelled')").fetchall():
                db.execute("UPDATE runs SET state='failed', error=?, finished=? WHERE id=? AND state='queued'",
                           (orphan_reason(o["field"], o["dep"], o["dstate"], o["derror"])[:500], now, o["id"]))
            row = db.execute(
                f"SELECT r.id FROM runs r WHERE r.state='queued' AND r.id NOT IN "
                f"(SELECT id FROM ({_NEEDS}) WHERE dstate != 'done') ORDER BY r.created, r.rowid LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE runs SET state='running', worker=?, heartbeat=?, pid=NULL, error=NULL WHERE id=?",
                       (worker_id, now, row["id"]))
            return row["id"]

    def interrupt_stale(self, before: float, reason: str) -> list[str]:
        """Mark running jobs whose last heartbeat is older than ``before`` interrupted (error ``reason``)
        and drop worker rows as old; returns the interrupted job ids.

        A run in the foreground (no worker) beats by itself; rows from before it did (no heartbeat at
        all) are not touched."""
        stale = ("state='running' AND ((worker IS NOT NULL AND COALESCE(heartbeat, 0) < ?) OR "
                 "(worker IS NULL AND heartbeat < ?))")
        with self.connect() as db:  # the common case (nothing stale) costs one read, no write lock
            if not db.execute(f"SELECT 1 FROM runs WHERE {stale} UNION ALL SELECT 1 FROM workers WHERE heartbeat < ? "
                              "LIMIT 1", (before, before, before)).fetchone():
                return []
        now = time.time()
        with self.transaction() as db:
            ids = [r["id"] for r in db.execute(f"SELECT id FROM runs WHERE {stale}", (before, before)).fetchall()]
            for job_id in ids:
                db.execute("UPDATE runs SET state='interrupted', finished=?, error=? WHERE id=? AND state='running'",
                           (now, reason, job_id))
            db.execute("DELETE FROM workers WHERE heartbeat < ?", (before,))
        return ids

    def request_cancel(self, job_id: str, queued_reason: str) -> str | None:
        """Cancel a queued job at once (error ``queued_reason``) or flag a running one to stop; a job in
        any other state is left alone. Returns the state the job was in (None: no such job)."""
        with self.transaction() as db:
            row = db.execute("SELECT state FROM runs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return None
            if row["state"] == "queued":
                db.execute("UPDATE runs SET state='cancelled', cancel_requested=1, finished=?, error=? WHERE id=?",
                           (time.time(), queued_reason, job_id))
            elif row["state"] == "running":
                db.execute("UPDATE runs SET cancel_requested=1 WHERE id=?", (job_id,))
            return row["state"]

    def requeue(self, job_id: str, from_states: Iterable[str]) -> dict[str, Any] | None:
        """Queue a job again under its id, clearing its outcome, if it is in one of ``from_states``.
        Returns its state and attempts as they were (None: no such job)."""
        with self.transaction() as db:
            row = db.execute("SELECT state, attempts FROM runs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return None
            if row["state"] in tuple(from_states):
                db.execute("UPDATE runs SET state='queued', cancel_requested=0, error=NULL, record=NULL, worker=NULL, "
                           "pid=NULL, heartbeat=NULL, started=NULL, finished=NULL WHERE id=?", (job_id,))
            return dict(row)

    def finish_running(self, job_id: str, state: str, reason: str) -> bool:
        """End a job that is still running as ``state`` with error ``reason``; False if it had already
        recorded its own end."""
        with self.transaction() as db:
            return db.execute("UPDATE runs SET state=?, error=?, finished=? WHERE id=? AND state='running'",
                              (state, reason, time.time(), job_id)).rowcount > 0

    def cancel_requested(self, job_ids: Iterable[str]) -> set[str]:
        """Those of ``job_ids`` asked to stop."""
        ids = tuple(job_ids)
        if not ids:
            return set()
        with self.connect() as db:
            return {r[0] for r in db.execute(f"SELECT id FROM runs WHERE cancel_requested=1 AND id IN ({_marks(ids)})",
                                             ids).fetchall()}

    def waiting_for(self) -> dict[str, str]:
        """Per queued job, the earliest submitted run it needs that has still to finish (one that ended
        fails the job instead); ids are not ordered within a second, so by submission, not by id."""
        with self.connect() as db:
            return {r[0]: r[1] for r in db.execute(
                "SELECT id, dep FROM (SELECT id, dep, ROW_NUMBER() OVER (PARTITION BY id ORDER BY dcreated, drow) "
                f"AS k FROM ({_NEEDS}) WHERE dstate IN ('queued','running')) WHERE k=1")}

    # -- workers ----------------------------------------------------------------------------------
    def put_worker(self, worker_id: str, *, pid: int | None, host: str, backend: str, concurrency: int | None,
                   now: float, job_ids: Iterable[str] = (), unless_alive_since: float | None = None) -> bool:
        """Write worker ``worker_id``'s row with heartbeat ``now`` (the one statement that writes worker
        rows: a new row starts at ``now``, an existing one keeps its start) and beat ``job_ids``, the
        running jobs it holds, in one transaction.

        With ``unless_alive_since`` nothing is written if any worker has beaten since then, so that
        concurrent callers starting a worker start exactly one. Returns whether the row was written."""
        with self.transaction() as db:
            if unless_alive_since is not None and \
                    db.execute("SELECT 1 FROM workers WHERE heartbeat >= ?", (unless_alive_since,)).fetchone():
                return False
            db.execute("INSERT INTO workers (id, pid, host, started, heartbeat, concurrency, backend) "
                       "VALUES (?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET pid=excluded.pid, host=excluded.host, "
                       "heartbeat=excluded.heartbeat, concurrency=excluded.concurrency, backend=excluded.backend",
                       (worker_id, pid, host, now, now, concurrency, backend))
            ids = tuple(job_ids)
            if ids:
                db.execute(f"UPDATE runs SET heartbeat=? WHERE state='running' AND worker=? AND id IN ({_marks(ids)})",
                           (now, worker_id, *ids))
        return True

    def set_worker_pid(self, worker_id: str, pid: int) -> None:
        """The pid of a worker started on demand, unless the worker has registered itself already."""
        with self.transaction() as db:
            db.execute("UPDATE workers SET pid=? WHERE id=? AND pid IS NULL", (pid, worker_id))

    def remove_worker(self, worker_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM workers WHERE id=?", (worker_id,))

    def live_workers(self, since: float) -> list[dict[str, Any]]:
        """Worker rows that have beaten since ``since``, the earliest started first."""
        with self.connect() as db:
            return [dict(r) for r in db.execute("SELECT * FROM workers WHERE heartbeat >= ? ORDER BY started",
                                                (since,)).fetchall()]

    # -- progress events ------------------------------------------------------------------------
    def add_event(self, run_id: str, data: dict[str, Any]) -> None:
        now = time.time()
        with self.transaction() as db:
            db.execute("INSERT INTO events (run_id, ts, data) VALUES (?,?,?)", (run_id, now, json.dumps(data)))
            db.execute("UPDATE runs SET heartbeat=? WHERE id=?", (now, run_id))

    def events(self, run_id: str, after: int = 0) -> list[dict[str, Any]]:
        with self.connect() as db:
            rows = db.execute("SELECT seq, ts, data FROM events WHERE run_id=? AND seq>? ORDER BY seq",
                              (run_id, after)).fetchall()
        return [_event(r) for r in rows]

    def last_events(self, run_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The latest progress event of each of ``run_ids`` that has one."""
        out = {}
        with self.connect() as db:
            for run_id in run_ids:
                r = db.execute("SELECT seq, ts, data FROM events WHERE run_id=? ORDER BY seq DESC LIMIT 1",
                               (run_id,)).fetchone()
                if r:
                    out[run_id] = _event(r)
        return out


# A queued job's parent and the runs its parameters name (deps), with the spec field naming each.
_NEEDS = ("SELECT r.id, p.id AS dep, 'model.from_run' AS field, p.state AS dstate, p.error AS derror, "
          "p.created AS dcreated, p.rowid AS drow FROM runs r "
          "JOIN runs p ON p.id=r.parent WHERE r.state='queued' UNION ALL "
          "SELECT r.id, q.id, d.field, q.state, q.error, q.created, q.rowid FROM runs r JOIN deps d ON d.run_id=r.id "
          "JOIN runs q ON q.id=d.dep_id WHERE r.state='queued'")


def _marks(values: tuple) -> str:
    return ",".join("?" * len(values))


def _event(r: sqlite3.Row) -> dict[str, Any]:
    return {"seq": r["seq"], "ts": r["ts"], **json.loads(r["data"])}


def _row(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["spec"] = json.loads(d["spec"]) if d.get("spec") else None
    d["record"] = json.loads(d["record"]) if d.get("record") else None
    return d
