"""The workspace: a SQLite (WAL) store of runs/jobs and their result records, plus ``runs/<id>/``.

One row per run; a queued job *is* a run that has not started yet, so a later job can name
an earlier one as ``model.from_run`` before it finishes. States:
queued -> running -> done | failed | cancelled | interrupted.
"""
from __future__ import annotations

import json
import re
import secrets
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

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
               parent: str | None = None, deps: list[tuple[str, str]] = ()) -> str:
        """A new run row; ``deps``: (field, run id) of other runs it needs, written in the same
        transaction so that no worker can claim the job before they are known."""
        run_id = check_run_id(run_id or new_run_id())
        model = spec.get("model", {})
        with self.transaction() as db:
            db.execute(
                "INSERT INTO runs (id, state, name, method, arch, dataset, parent, spec, created) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                (run_id, state, spec.get("name"), spec.get("method", {}).get("name"), model.get("arch"),
                 spec.get("data", {}).get("name"), parent or model.get("from_run"), json.dumps(spec), time.time()))
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
        return [{"seq": r["seq"], "ts": r["ts"], **json.loads(r["data"])} for r in rows]


def _row(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["spec"] = json.loads(d["spec"]) if d.get("spec") else None
    d["record"] = json.loads(d["record"]) if d.get("record") else None
    return d
