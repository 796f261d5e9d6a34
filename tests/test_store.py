"""The store's queue and worker-row methods, against a bare SQLite workspace (no worker processes)."""
from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest

from engine import jobs, worker
from engine.errors import LeaseLost
from engine.store import Store


def spec(name: str, from_run: str | None = None) -> dict:
    return {"name": name, "data": {"name": "digits"}, "model": {"arch": "resnet18", "from_run": from_run},
            "method": {"name": "baseline", "params": {}}}


def reason(*parts) -> str:
    """An orphan's error naming everything ``Store.claim`` hands over: field, run, its state and error."""
    return "|".join(map(str, parts))


@pytest.fixture()
def store(tmp_path) -> Store:
    return Store(tmp_path / "ws")


def test_one_worker_row_across_placeholder_register_heartbeat_and_re_register(store, monkeypatch):
    class Backend:
        concurrency = 1

        def close(self) -> None:
            pass

    monkeypatch.setattr(jobs.subprocess, "Popen", lambda *a, **k: SimpleNamespace(pid=4242))
    monkeypatch.setattr("engine.backends.get", lambda *a: Backend())
    assert jobs.ensure_worker(store)                                 # the placeholder row of a worker started on demand
    [placeholder] = store.live_workers(0)
    assert placeholder["pid"] == 4242 and placeholder["concurrency"] is None
    assert not jobs.ensure_worker(store)                             # one is alive: no second row

    w = worker.Worker(store, concurrency=1, worker_id=placeholder["id"])
    w.register()
    [row] = store.live_workers(0)
    assert (row["id"], row["pid"], row["concurrency"]) == (placeholder["id"], os.getpid(), 1)
    w.heartbeat(row["heartbeat"] + 5)
    [beat] = store.live_workers(0)
    assert beat["heartbeat"] == row["heartbeat"] + 5 and beat["started"] == placeholder["started"]

    store.interrupt_stale(beat["heartbeat"] + 1, "stale")          # the row is dropped as stale ...
    assert store.live_workers(0) == []
    w.heartbeat(beat["heartbeat"] + 10)                              # ... and the next beat writes it again
    [again] = store.live_workers(0)
    assert (again["id"], again["pid"], again["concurrency"]) == (placeholder["id"], os.getpid(), 1)
    w.shutdown()
    assert store.live_workers(0) == []


def test_put_worker_unless_alive_and_beats_only_its_running_jobs(store):
    now = time.time()
    assert store.put_worker("w1", pid=1, host="h", backend="local", concurrency=2, now=now)
    assert not store.put_worker("w2", pid=2, host="h", backend="local", concurrency=1, now=now,
                                unless_alive_since=now - 10)
    assert [w["id"] for w in store.live_workers(now - 10)] == ["w1"]
    mine, other, done = (store.create(spec(n)) for n in ("mine", "other", "done"))
    (got, lease), (got_other, other_lease) = store.claim("w1", reason), store.claim("w9", reason)
    assert (got, got_other) == (mine, other)
    store.update(done, state="done", worker="w1")
    store.put_worker("w1", pid=1, host="h", backend="local", concurrency=2, now=now + 50,
                     leases={mine: lease, other: other_lease, done: "x"})
    assert store.get(mine)["heartbeat"] == now + 50
    assert store.get(other)["heartbeat"] != now + 50 and store.get(done)["heartbeat"] is None


def test_claim_takes_the_oldest_runnable_job_and_fails_orphans(store):
    parent = store.create(spec("parent"))
    child = store.create(spec("child", from_run=parent))
    assert store.waiting_for() == {child: parent}
    assert store.claim("w", reason)[0] == parent                     # the child waits for its parent
    assert store.claim("w", reason) is None
    row = store.get(parent)
    assert (row["state"], row["worker"]) == ("running", "w")
    store.finish_running(parent, "failed", "boom")
    assert store.claim("w", reason) is None
    row = store.get(child)
    assert (row["state"], row["error"]) == ("failed", f"model.from_run|{parent}|failed|boom")
    assert store.waiting_for() == {}


def test_interrupt_stale_leaves_live_and_unbeaten_foreground_runs(store):
    now = time.time()
    stale, live, foreground = (store.create(spec(n)) for n in ("stale", "live", "foreground"))
    store.update(stale, state="running", worker="w", heartbeat=now - 100)
    store.update(live, state="running", worker="w", heartbeat=now)
    store.update(foreground, state="running")                        # a foreground run from before runs beat
    assert store.interrupt_stale(now - 10, "gone") == [stale]
    assert (store.get(stale)["state"], store.get(stale)["error"]) == ("interrupted", "gone")
    assert {store.get(i)["state"] for i in (live, foreground)} == {"running"}
    assert store.interrupt_stale(now - 10, "gone") == []


def test_cancel_requeue_and_finish(store):
    queued, running = store.create(spec("q")), store.create(spec("r"))
    store.update(running, state="running", attempts=1)
    assert store.request_cancel("nope", "x") is None and store.requeue("nope", ("failed",)) is None
    assert store.request_cancel(queued, "before it started") == "queued"
    assert (store.get(queued)["state"], store.get(queued)["error"]) == ("cancelled", "before it started")
    assert store.request_cancel(running, "x") == "running" and store.get(running)["state"] == "running"
    assert store.cancel_requested([queued, running]) == {queued, running} and store.cancel_requested([]) == set()
    assert store.request_cancel(queued, "x") == "cancelled"          # a final state is left alone

    assert store.requeue(running, ("failed",)) == {"state": "running", "attempts": 1}
    assert store.get(running)["state"] == "running"                  # not one of from_states: untouched
    assert store.finish_running(running, "interrupted", "stopped") and not store.finish_running(running, "failed", "x")
    assert store.requeue(running, ("interrupted",)) == {"state": "interrupted", "attempts": 1}
    row = store.get(running)
    assert (row["state"], row["error"], row["cancel_requested"], row["finished"]) == ("queued", None, 0, None)


def test_counts_version_and_last_events(store):
    assert store.done_version() == (0, None)
    a, b = store.create(spec("a")), store.create(spec("b"))
    store.update(a, state="done", finished=123.0)
    assert store.done_version() == (1, 123.0)
    assert store.count_by_state(("queued", "running", "done")) == {"queued": 1, "done": 1}
    store.add_event(a, {"phase": "one"})
    store.add_event(a, {"phase": "two"})
    last = store.last_events([a, b])
    assert list(last) == [a] and last[a]["phase"] == "two"
    old = store.create(spec("old"), created=1.0)
    assert store.list()[-1]["id"] == old


def test_a_claim_is_a_lease_only_its_holder_can_use(store):
    """Beats, state changes, events and results of an attempt whose job was requeued (and claimed again)
    are refused, and the first transaction that notices says LeaseLost, writing nothing."""
    job = store.create(spec("j"))
    got, old = store.claim("w1", reason)
    assert got == job and store.get(job)["lease"] == old
    store.update(job, lease=old, pid=11, host="h", pid_start=5)      # the holder may
    assert (store.get(job)["pid"], store.get(job)["pid_start"]) == (11, 5)
    store.check_lease(job, old)
    assert store.finish_running(job, "interrupted", "no heartbeat", lease=old)
    assert store.requeue(job, ("interrupted",))["state"] == "interrupted"
    assert store.get(job)["lease"] is None                           # a requeue takes the lease away at once
    with pytest.raises(LeaseLost):
        store.update(job, lease=old, state="failed")
    _, new = store.claim("w2", reason)
    assert new != old
    wrote = []
    for refused in (lambda: store.update(job, lease=old, state="done", error=None),
                    lambda: store.add_event(job, {"phase": "train"}, lease=old),
                    lambda: store.check_lease(job, old),
                    lambda: store.publish(job, old, lambda: wrote.append("result.json"), state="done")):
        with pytest.raises(LeaseLost, match="no longer holds it"):
            refused()
    assert not wrote and [e["phase"] for e in store.events(job)] == []
    assert not store.finish_running(job, "interrupted", "stale", lease=old)
    now = time.time()
    store.put_worker("w1", pid=1, host="h", backend="local", concurrency=1, now=now, leases={job: old})
    assert store.get(job)["heartbeat"] != now                        # the old worker's beat does not count
    store.put_worker("w2", pid=2, host="h", backend="local", concurrency=1, now=now, leases={job: new})
    assert store.get(job)["heartbeat"] == now
    store.update(job, error="marked interrupted while it ran")
    store.publish(job, new, lambda: wrote.append("result.json"), state="done", error=None, record={"a": 1})
    row = store.get(job)
    assert wrote == ["result.json"] and (row["state"], row["error"], row["record"]) == ("done", None, {"a": 1})


def test_requeue_asks_unless_in_the_same_transaction(store):
    job = store.create(spec("j"))
    store.claim("w", reason)
    store.finish_running(job, "interrupted", "stale")
    assert store.requeue(job, ("interrupted",), unless=lambda row: f"pid {row['pid']} lives") == \
        {"state": "interrupted", "attempts": 0, "refused": "pid None lives"}
    assert store.get(job)["state"] == "interrupted"
    assert store.requeue(job, ("interrupted",), unless=lambda row: None)["state"] == "interrupted"
    assert store.get(job)["state"] == "queued"


def test_an_existing_workspace_opens_without_writing_and_an_old_one_gets_the_new_columns(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    import sqlite3
    db = sqlite3.connect(old / "slimbench.db")
    db.executescript("CREATE TABLE runs (id TEXT PRIMARY KEY, state TEXT NOT NULL, name TEXT, method TEXT, arch TEXT, "
                     "dataset TEXT, parent TEXT, spec TEXT NOT NULL, record TEXT, error TEXT, created REAL NOT NULL, "
                     "started REAL, finished REAL, attempts INTEGER NOT NULL DEFAULT 0, worker TEXT, pid INTEGER, "
                     "heartbeat REAL, cancel_requested INTEGER NOT NULL DEFAULT 0);"
                     "INSERT INTO runs (id, state, spec, created) VALUES ('r1', 'done', '{}', 1.0);")
    db.close()
    store = Store(old)                                               # an old workspace: migrated
    assert store.get("r1")["lease"] is None and store.get("r1")["pid_start"] is None
    (old / "slimbench.db").chmod(0o444)
    old.chmod(0o555)                                                 # now nothing can be written there
    try:
        if os.access(old, os.W_OK):
            pytest.skip("running as root: permissions do not stop writes (the full-disk test covers this)")
        assert [r["id"] for r in Store(old).list()] == ["r1"]
    finally:
        old.chmod(0o755)


def test_a_failed_commit_is_reported_not_masked_by_its_rollback(store, monkeypatch):
    """SQLite rolls back by itself on a full disk; the ROLLBACK after it used to raise "cannot rollback -
    no transaction is active" and hide the real error."""
    import sqlite3
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        with store.transaction() as db:
            db.execute("ROLLBACK")                                   # what SQLite did by itself
            raise sqlite3.OperationalError("database or disk is full")
