"""The store's queue and worker-row methods, against a bare SQLite workspace (no worker processes)."""
from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest

from engine import jobs, worker
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
