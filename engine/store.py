"""The workspace: a SQLite (WAL) store of runs/jobs and their result records, plus ``runs/<id>/``.

One row per run; a queued job *is* a run that has not started yet, so a later job can name
an earlier one as ``model.from_run`` before it finishes. States:
queued -> running -> done | failed | cancelled | interrupted.

Every SQL statement of the project is a method here; ``jobs`` and ``worker`` decide what to do, and
when, and what reason a row records.
"""
from __future__ import annotations

import errno
import json
import re
import secrets
import shutil
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from . import layout, settings
from .errors import LeaseLost

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
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    lease TEXT,
    host TEXT,
    pid_start INTEGER
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
# Columns added after the first release: an older workspace gets them when a writable Store opens it.
# lease: the token of the attempt that holds a running job (claim sets it, requeue clears it); only its
# holder may beat, change or finish the row. host, pid, pid_start: the process that holds it, so that
# a job whose process is alive on this host is never declared dead.
ADDED_COLUMNS = {"lease": "TEXT", "host": "TEXT", "pid_start": "INTEGER"}
# Kept free in the workspace so that a job that hits a full disk can still record why it failed.
RESERVE = ".disk-reserve"
RESERVE_BYTES = 1 << 20


def is_disk_full(e: BaseException, where: Path | None = None) -> bool:
    """``e`` says the disk is full: ENOSPC, SQLite's "database or disk is full", or another SQLite error
    (an I/O error creating the WAL's files, a read-only fallback) while less than a reserve's worth of
    space is left in ``where``."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return True
    if not isinstance(e, sqlite3.OperationalError):
        return False
    if getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(e):
        return True
    return where is not None and free_bytes(where) < RESERVE_BYTES


def disk_full_reason(e: BaseException, where: Path) -> str:
    """"disk full (N MB free in <dir>)", naming the folder of the file that did not fit (else ``where``)."""
    name = getattr(e, "filename", None)
    folder = Path(name).parent if isinstance(name, str) and name else Path(where)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return f"disk full ({free_bytes(folder) / 1e6:.0f} MB free in {folder}): free some space, then retry it"


def cannot_write(e: BaseException, where: Path | None = None) -> bool:
    """``e`` is the store refusing a write it cannot make now (a full disk, a read-only workspace), as
    opposed to a bug: a reader can go on without writing."""
    if is_disk_full(e, where):
        return True
    return isinstance(e, sqlite3.Error) and (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF == sqlite3.SQLITE_READONLY


def free_bytes(where: Path) -> int:
    try:
        return shutil.disk_usage(where).free
    except OSError:
        return 0


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
        self.db_path = self.root / "slimbench.db"
        # an existing workspace opens without a single write, so reading works on a full disk
        fresh = not (self.db_path.is_file() and self._schema_is_current())
        if fresh or not self.runs_dir.is_dir():
            self.runs_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            with self.connect() as db:
                db.executescript(SCHEMA)
                have = {r["name"] for r in db.execute("PRAGMA table_info(runs)")}
                for name, kind in ADDED_COLUMNS.items():
                    if name not in have:
                        try:
                            db.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
                        except sqlite3.OperationalError as e:  # another process opening it added it first
                            if "duplicate column" not in str(e):
                                raise
        self.keep_reserve()

    def _schema_is_current(self) -> bool:
        try:
            with self.connect() as db:
                have = {r["name"] for r in db.execute("PRAGMA table_info(runs)")}
                return set(ADDED_COLUMNS) <= have and db.execute(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type='table' AND name IN ('events','deps','workers')"
                ).fetchone()[0] == 3
        except sqlite3.Error:
            return False

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        db = self._open()
        try:
            db.row_factory = sqlite3.Row
            yield db
        finally:
            db.close()

    def _open(self) -> sqlite3.Connection:
        """A connection; when the disk is full (SQLite cannot even create the WAL's index file) or the
        workspace read-only, a read-only one, so that reading goes on (writes then fail, and say why)."""
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=30000")
            # journal_mode=WAL is a write only the first time (a new database); later it is a read
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            return db
        except sqlite3.Error as e:
            db.close()
            if not (self.db_path.is_file() and cannot_write(e, self.root)):
                raise
            error = e
        # mode=ro reads through the WAL when its files exist; immutable=1 reads the database file alone
        # (what the last checkpoint wrote) when they cannot be created
        for query in ("mode=ro", "immutable=1"):
            db = sqlite3.connect(f"{self.db_path.as_uri()}?{query}", uri=True, timeout=30, isolation_level=None)
            try:
                db.execute("PRAGMA busy_timeout=30000")
                db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
                return db
            except sqlite3.Error:
                db.close()
        raise error

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: one writer at a time, so claims and state changes never race."""
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back by itself (e.g. on a full disk): a ROLLBACK then fails with
                # "no transaction is active" and would hide the error that matters
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise

    # -- the disk reserve ---------------------------------------------------------------------------
    def keep_reserve(self) -> None:
        """(Re)create the reserve file while the disk has room for it and more; never fails."""
        path = self.root / RESERVE
        try:
            if not path.exists() and free_bytes(self.root) > 8 * RESERVE_BYTES:
                with open(path, "wb") as f:
                    f.write(b"\0" * RESERVE_BYTES)
        except OSError:
            path.unlink(missing_ok=True)

    def release_reserve(self) -> bool:
        """Free the reserve so that the next write (a job's failure) fits on a full disk; True if freed."""
        try:
            (self.root / RESERVE).unlink()
            return True
        except OSError:
            return False

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

    def end_without_result(self, run_id: str, state: str, reason: str, lease: str | None = None) -> None:
        """Record that a run ended ``state`` (failed, cancelled) with error ``reason``: its artifacts go
        first (nothing half-done stays visible), unless a later attempt holds the run (LeaseLost, nothing
        touched). On a full disk the reserve is freed so that the reason can still be recorded."""
        if lease is not None:
            self.check_lease(run_id, lease)
        self.remove_artifacts(run_id)
        fields = {"state": state, "finished": time.time(), "error": reason}
        try:
            self.update(run_id, lease=lease, **fields)
        except Exception as e:
            if not is_disk_full(e, self.root) or not self.release_reserve():
                raise
            self.update(run_id, lease=lease, **fields)

    def update(self, run_id: str, *, lease: str | None = None, **fields: Any) -> None:
        """Set ``fields`` of run ``run_id``; with ``lease``, only while that attempt holds the run
        (else :class:`LeaseLost`, nothing written)."""
        fields = _row_fields(fields)
        with self.transaction() as db:
            _require_lease(db, run_id, lease)
            db.execute(f"UPDATE runs SET {', '.join(f'{k}=?' for k in fields)} WHERE id=?", (*fields.values(), run_id))

    def check_lease(self, run_id: str, lease: str) -> None:
        """:class:`LeaseLost` unless ``lease`` still holds run ``run_id``."""
        with self.connect() as db:
            _require_lease(db, run_id, lease)

    def publish(self, run_id: str, lease: str | None, write: Callable[[], None], **fields: Any) -> None:
        """``write()`` (e.g. rename result files into the run folder), then set ``fields``, in one
        transaction that first checks ``lease`` (when given; else :class:`LeaseLost`): as no claim or
        requeue can happen meanwhile, only the attempt holding the run writes, and its files and its
        row change together (an error in ``write`` leaves the row as it was)."""
        fields = _row_fields(fields)
        with self.transaction() as db:
            _require_lease(db, run_id, lease)
            write()
            db.execute(f"UPDATE runs SET {', '.join(f'{k}=?' for k in fields)} WHERE id=?", (*fields.values(), run_id))

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

    def labelled_ids(self, experiment: str | None = None, group: str | None = None,
                     states: tuple[str, ...] | None = None) -> list[str]:
        """Ids of the runs whose spec has ``experiment`` / ``group`` (each where given) in ``states`` (all
        where None), oldest first; read without loading their records."""
        q, args = "SELECT id FROM runs WHERE 1=1", []
        for key, value in (("experiment", experiment), ("group", group)):
            if value is not None:
                q += f" AND json_extract(spec, '$.{key}') = ?"
                args.append(value)
        if states:
            q += f" AND state IN ({_marks(states)})"
            args += list(states)
        with self.connect() as db:
            return [r[0] for r in db.execute(q + " ORDER BY created, rowid", args).fetchall()]

    def finished_runs(self) -> list[dict[str, Any]]:
        """The done runs' spec, start, finish and host (no record: how long jobs take, cheaply)."""
        with self.connect() as db:
            rows = db.execute("SELECT id, spec, started, finished, host FROM runs WHERE state='done'").fetchall()
        return [{**dict(r), "spec": json.loads(r["spec"]) if r["spec"] else None} for r in rows]

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
    def claim(self, worker_id: str, orphan_reason: Callable[[str, str, str, str | None], str]) -> tuple[str, str] | None:
        """Take the oldest queued job whose needed runs (parent, deps) are all done, or that needs none,
        for ``worker_id``; returns (job id, lease token: its job process records itself with it), None
        if there is none. In the same transaction every queued job one of whose
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
            lease = secrets.token_hex(8)
            db.execute("UPDATE runs SET state='running', worker=?, heartbeat=?, pid=NULL, host=NULL, pid_start=NULL, "
                       "error=NULL, lease=? WHERE id=?", (worker_id, now, lease, row["id"]))
            return row["id"], lease

    def stale_running(self, before: float) -> list[dict[str, Any]]:
        """Running jobs whose last heartbeat is older than ``before`` (id, host, pid, pid_start). A run in
        the foreground (no worker) beats by itself; rows from before it did (no heartbeat) are left out."""
        with self.connect() as db:  # the common case (nothing stale) is one read, no write lock
            return [dict(r) for r in db.execute(f"SELECT id, host, pid, pid_start FROM runs WHERE {_STALE}",
                                                (before, before)).fetchall()]

    def interrupt_stale(self, before: float, reason: str, job_ids: Iterable[str] | None = None) -> list[str]:
        """Mark those of ``job_ids`` (default: every stale job) still running with no heartbeat since
        ``before`` interrupted (error ``reason``), and drop worker rows as old; returns the ids marked."""
        now = time.time()
        with self.connect() as db:
            if not db.execute(f"SELECT 1 FROM runs WHERE {_STALE} UNION ALL SELECT 1 FROM workers "
                              "WHERE heartbeat < ? LIMIT 1", (before, before, before)).fetchone():
                return []
        with self.transaction() as db:
            ids = [r["id"] for r in db.execute(f"SELECT id FROM runs WHERE {_STALE}", (before, before)).fetchall()]
            if job_ids is not None:
                wanted = set(job_ids)
                ids = [i for i in ids if i in wanted]
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

    def requeue(self, job_id: str, from_states: Iterable[str],
                unless: Callable[[dict[str, Any]], str | None] | None = None) -> dict[str, Any] | None:
        """Queue a job again under its id, clearing its outcome, if it is in one of ``from_states`` and
        ``unless(row)`` (asked in the same transaction) gives no reason to refuse. Returns its state and
        attempts as they were, plus ``refused``: that reason, if any (None: no such job)."""
        states = tuple(from_states)
        with self.transaction() as db:
            row = db.execute("SELECT * FROM runs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return None
            out = {"state": row["state"], "attempts": row["attempts"]}
            refused = unless(_row(row)) if unless and row["state"] in states else None
            if refused:
                return {**out, "refused": refused}
            if row["state"] in states:
                # the lease goes too: an earlier attempt still alive somewhere can write nothing more
                db.execute("UPDATE runs SET state='queued', cancel_requested=0, error=NULL, record=NULL, worker=NULL, "
                           "pid=NULL, host=NULL, pid_start=NULL, lease=NULL, heartbeat=NULL, started=NULL, "
                           "finished=NULL WHERE id=?", (job_id,))
            return out

    def finish_running(self, job_id: str, state: str, reason: str, lease: str | None = None) -> bool:
        """End a job that is still running (held by ``lease``, when given) as ``state`` with error
        ``reason``; False if it had already recorded its own end or another attempt holds it. For the
        worker, once the job's process has ended: the lease goes with it (no attempt holds the job)."""
        with self.transaction() as db:
            return db.execute("UPDATE runs SET state=?, error=?, finished=?, lease=NULL WHERE id=? AND state='running' "
                              "AND (? IS NULL OR lease=?)", (state, reason, time.time(), job_id, lease, lease)
                              ).rowcount > 0

    def cancel_requested(self, job_ids: Iterable[str]) -> set[str]:
        """Those of ``job_ids`` asked to stop."""
        ids = tuple(job_ids)
        if not ids:
            return set()
        with self.connect() as db:
            return {r[0] for r in db.execute(f"SELECT id FROM runs WHERE cancel_requested=1 AND id IN ({_marks(ids)})",
                                             ids).fetchall()}

    def waiting_for(self, states: tuple[str, ...] = ("queued", "running")) -> dict[str, str]:
        """Per queued job, the earliest submitted run it needs that is in one of ``states`` (default: has
        still to finish; one that ended failed or cancelled fails the job instead, one that ended
        interrupted holds it until retried or cancelled); ids are not ordered within a second, so by
        submission, not by id."""
        with self.connect() as db:
            return {r[0]: r[1] for r in db.execute(
                "SELECT id, dep FROM (SELECT id, dep, ROW_NUMBER() OVER (PARTITION BY id ORDER BY dcreated, drow) "
                f"AS k FROM ({_NEEDS}) WHERE dstate IN ({_marks(states)})) WHERE k=1", states)}

    # -- workers ----------------------------------------------------------------------------------
    def put_worker(self, worker_id: str, *, pid: int | None, host: str, backend: str, concurrency: int | None,
                   now: float, leases: dict[str, str] | None = None, unless_alive_since: float | None = None) -> bool:
        """Write worker ``worker_id``'s row with heartbeat ``now`` (the one statement that writes worker
        rows: a new row starts at ``now``, an existing one keeps its start) and beat the running jobs it
        holds, ``leases`` (job id -> lease token; a job another attempt holds now is not beaten), in one
        transaction.

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
            db.executemany("UPDATE runs SET heartbeat=? WHERE id=? AND state='running' AND worker=? AND lease=?",
                           [(now, job_id, worker_id, lease) for job_id, lease in (leases or {}).items()])
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
    def add_event(self, run_id: str, data: dict[str, Any], lease: str | None = None) -> None:
        """A progress event (and a heartbeat); with ``lease``, only while that attempt holds the run."""
        now = time.time()
        with self.transaction() as db:
            _require_lease(db, run_id, lease)
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


# Running jobs with no heartbeat since a time (twice the parameter).
_STALE = ("state='running' AND ((worker IS NOT NULL AND COALESCE(heartbeat, 0) < ?) OR "
          "(worker IS NULL AND heartbeat < ?))")

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


# The run-row fields a caller may set (the rest belong to the queue's own statements).
UPDATABLE = {"state", "record", "error", "started", "finished", "attempts", "worker", "pid", "heartbeat",
             "cancel_requested", "arch", "name", "host", "pid_start"}


def _row_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` checked against :data:`UPDATABLE` and :data:`STATES`, a record encoded as JSON."""
    bad = set(fields) - UPDATABLE
    if bad:
        raise ValueError(f"cannot update {bad}")
    if "state" in fields and fields["state"] not in STATES:
        raise ValueError(f"unknown state {fields['state']!r}")
    if "record" in fields and not isinstance(fields["record"], (str, type(None))):
        fields = {**fields, "record": json.dumps(fields["record"])}
    return fields


def _require_lease(db: sqlite3.Connection, run_id: str, lease: str | None) -> None:
    """:class:`LeaseLost` when ``lease`` is given and no longer holds run ``run_id`` (a later attempt does)."""
    if lease is not None and not db.execute("SELECT 1 FROM runs WHERE id=? AND lease=?", (run_id, lease)).fetchone():
        raise LeaseLost(f"run {run_id}: this attempt no longer holds it (it was retried)")


def _row(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["spec"] = json.loads(d["spec"]) if d.get("spec") else None
    d["record"] = json.loads(d["record"]) if d.get("record") else None
    return d
