"""Background jobs for real: worker processes, job processes, cancel, kill -9, retry, dependencies."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from engine import jobs
from engine.spec import SpecError
from engine.store import Store

from conftest import ROOT, cli

MEASURE = {"onnx": False, "latency_runs": 1, "warmup_runs": 0, "batch_size": 2}
TRIVIAL = {"data": {"name": "digits", "limit": 100, "test_limit": 50}, "model": {"arch": "resnet18"},
           "method": {"name": "baseline"}, "train": {"epochs": 0}, "measure": MEASURE}
SHORT = {**TRIVIAL, "data": {"name": "digits", "limit": 200, "test_limit": 50}, "train": {"epochs": 1}}
LONG = {**TRIVIAL, "data": {"name": "digits", "limit": 300, "test_limit": 50, "batch_size": 16},
        "train": {"epochs": 200}}
WORKERS: list[subprocess.Popen] = []


@pytest.fixture()
def ws(tmp_path, monkeypatch):
    """A fresh workspace with fast heartbeats; every worker started here is stopped afterwards."""
    home = tmp_path / "ws"
    env = {"SLIMBENCH_HOME": str(home), "SLIMBENCH_NO_AUTOSTART": "1", "SLIMBENCH_HEARTBEAT_S": "0.3",
           "SLIMBENCH_STALE_S": "3"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    store = Store(home)
    yield store
    for p in WORKERS:  # SIGKILL: their forkservers and job processes die with them
        if p.poll() is None:
            p.kill()
        p.wait()
    WORKERS.clear()
    for row in store.list(state="running"):  # job processes of a killed worker die with it; make sure
        if row["pid"]:
            try:
                os.kill(row["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass


def start_worker(store: Store, *args: str) -> subprocess.Popen:
    env = {**os.environ, "SLIMBENCH_HOME": str(store.root)}
    p = subprocess.Popen([sys.executable, "-m", "engine", "worker", "--exit-when-idle", "60", *args], cwd=ROOT,
                         env=env, stdout=subprocess.DEVNULL, stderr=open(store.root / f"worker-{len(WORKERS)}.err", "w"))
    WORKERS.append(p)
    return p


def wait_for(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def state_of(store: Store, job_id: str) -> str:
    return store.get(job_id)["state"]


def wait_state(store: Store, job_id: str, states: tuple[str, ...], timeout: float = 300) -> dict:
    """Generous timeout: the CI box is a shared 2-core machine; the jobs themselves take seconds."""
    row = wait_for(lambda: (r := store.get(job_id)) and r["state"] in states and r, timeout,
                   f"job {job_id} to be {states}")
    return row


@pytest.mark.fast
def test_submit_runs_to_done_with_progress_and_cli(ws):
    spec_path = ws.root / "spec.json"
    spec_path.write_text(json.dumps(SHORT))
    p = cli("submit", "--no-worker", str(spec_path), home=ws.root)
    assert p.returncode == 0, p.stderr
    job_id = p.stdout.strip()
    assert state_of(ws, job_id) == "queued"
    listed = json.loads(cli("jobs", "--json", home=ws.root).stdout)
    assert [j["id"] for j in listed] == [job_id] and listed[0]["state"] == "queued"

    start_worker(ws)
    row = wait_state(ws, job_id, ("done", "failed"))
    assert row["state"] == "done", row["error"]
    assert row["attempts"] == 1 and row["record"]["accuracy"] is not None
    phases = [e["phase"] for e in ws.events(job_id)]
    assert phases[0] == "queued" and "data" in phases and "train:val" in phases and "measure" in phases
    train = [e for e in ws.events(job_id) if e["phase"] == "train"]
    assert train and all(k in train[-1] for k in ("epoch", "step", "loss", "acc", "images_per_s", "eta_s"))
    assert (ws.run_dir(job_id) / "model.pt").is_file()
    log = jobs.job_log(job_id, ws)
    assert "method baseline" in log and "done: accuracy" in log
    last = jobs.list_jobs(ws)[0]["last_event"]
    assert last["phase"] in ("measure", "measure:deploy")   # deploying in every runtime is the last step
    text = cli("jobs", home=ws.root).stdout
    assert job_id in text and "done" in text


def test_cancel_queued_and_running_within_5s(ws):
    queued = jobs.submit(TRIVIAL, ws)
    jobs.cancel(queued, ws)
    assert state_of(ws, queued) == "cancelled"

    job_id = jobs.submit(LONG, ws)
    start_worker(ws)
    wait_for(lambda: any(e["phase"] == "train" for e in ws.events(job_id)), 90, "training to start")
    t0 = time.monotonic()
    p = cli("cancel", job_id, home=ws.root)
    assert p.returncode == 0, p.stderr
    row = wait_state(ws, job_id, ("cancelled", "failed", "done"), timeout=10)
    elapsed = time.monotonic() - t0
    assert row["state"] == "cancelled" and elapsed < 5, (row["state"], elapsed)
    leftovers = {p.name for p in ws.run_dir(job_id).iterdir()}
    assert not leftovers & {"model.pt", "model.onnx", "result.json", "card.json"}
    assert "log" in leftovers
    with pytest.raises(ValueError, match="already cancelled"):
        jobs.cancel(job_id, ws)


def test_kill_job_process_then_retry(ws):
    job_id = jobs.submit(SHORT, ws)
    start_worker(ws)
    pid = wait_for(lambda: ws.get(job_id)["pid"], 60, "the job process")
    wait_for(lambda: ws.events(job_id)[-1]["phase"] != "queued", 60, "the job to report progress")
    os.kill(pid, signal.SIGKILL)
    row = wait_state(ws, job_id, ("interrupted", "done", "failed"), timeout=30)
    assert row["state"] == "interrupted" and "signal 9" in row["error"] and "data.image_size" in row["error"]
    assert jobs.job_log(job_id, ws)  # the log survives
    assert not (ws.run_dir(job_id) / "model.pt").exists()

    assert cli("retry", job_id, home=ws.root).stdout.strip() == job_id
    row = wait_state(ws, job_id, ("done", "failed", "interrupted"))
    assert row["state"] == "done" and row["attempts"] == 2
    assert "retry requested" in jobs.job_log(job_id, ws, tail=1000)


def test_kill_worker_marks_interrupted_then_retry(ws):
    job_id = jobs.submit(SHORT, ws)
    worker = start_worker(ws)
    job_pid = wait_for(lambda: ws.get(job_id)["pid"], 60, "the job process")
    wait_for(lambda: ws.events(job_id)[-1]["phase"] != "queued", 60, "the job to report progress")
    assert jobs.worker_status(ws)["alive"]
    worker.kill()  # SIGKILL: no clean-up at all
    worker.wait()
    t0 = time.monotonic()
    row = wait_for(lambda: (r := jobs.list_jobs(ws)[0])["state"] != "running" and r, 30, "recovery")
    assert row["state"] == "interrupted" and "heartbeat" in row["error"]
    assert time.monotonic() - t0 < 30
    # the orphaned job process died with its worker instead of finishing a job marked interrupted
    wait_for(lambda: not _alive(job_pid), 10, "the job process to exit")
    assert not jobs.worker_status(ws)["alive"]

    jobs.retry(job_id, ws)
    start_worker(ws)
    row = wait_state(ws, job_id, ("done", "failed", "interrupted"))
    assert row["state"] == "done" and row["attempts"] == 2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too
        return f.read().split(")")[-1].split()[0] != "Z"


def test_exception_fails_with_reason_and_worker_goes_on(ws, tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"this is not a checkpoint")
    broken = jobs.submit({**TRIVIAL, "model": {"checkpoint": str(bad)}}, ws)
    fine = jobs.submit(TRIVIAL, ws)
    start_worker(ws)
    row = wait_state(ws, broken, ("failed", "done"))
    assert row["state"] == "failed"
    assert row["error"].startswith("model.checkpoint") and "\n" not in row["error"]
    assert "Traceback" in jobs.job_log(broken, ws)
    assert wait_state(ws, fine, ("done", "failed"))["state"] == "done"


@pytest.mark.fast
def test_concurrent_claims_never_take_a_job_twice(ws):
    ids = [ws.create(TRIVIAL, state="queued") for _ in range(30)]
    claimed: list[tuple[str, str]] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        s = Store(ws.root)
        while (claim := jobs.claim(s, name)) is not None:
            job = claim[0]
            with lock:
                claimed.append((name, job))

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(j for _, j in claimed) == sorted(ids)  # every job exactly once
    assert {r["worker"] for r in ws.list()} == {w for w, _ in claimed}


def test_two_workers_run_each_job_once(ws):
    ids = jobs.submit_many([TRIVIAL] * 4, ws)
    start_worker(ws)
    start_worker(ws)
    wait_for(lambda: len(jobs.live_workers(ws)) == 2, 30, "two live workers")
    rows = [wait_state(ws, i, ("done", "failed")) for i in ids]
    assert all(r["state"] == "done" and r["attempts"] == 1 for r in rows)
    for i in ids:
        assert jobs.job_log(i, ws, tail=1000).count("done: accuracy") == 1
    assert len({r["worker"] for r in rows}) == 2  # both workers took part


def test_dependency_waits_for_parent_and_restart_keeps_history(ws):
    parent = jobs.submit(TRIVIAL, ws)
    child = jobs.submit({**TRIVIAL, "model": {"from_run": parent}}, ws)
    doomed_parent = jobs.submit(TRIVIAL, ws)
    doomed = jobs.submit({**TRIVIAL, "model": {"from_run": doomed_parent}}, ws)
    jobs.cancel(doomed_parent, ws)
    assert jobs.list_jobs(ws, states=["queued"])[-1]["id"] == parent
    waiting = {j["id"]: j["waiting_for"] for j in jobs.list_jobs(ws)}
    assert waiting[child] == parent and waiting[doomed] is None  # a cancelled parent is not waited for

    worker = start_worker(ws, "--concurrency", "2")  # a free slot must still not start the child early
    p_row = wait_state(ws, parent, ("done", "failed"))
    c_row = wait_state(ws, child, ("done", "failed"))
    assert p_row["state"] == c_row["state"] == "done"
    assert c_row["started"] >= p_row["finished"] and c_row["record"]["parent"] == parent
    d_row = ws.get(doomed)
    assert d_row["state"] == "failed" and doomed_parent in d_row["error"] and "cancelled" in d_row["error"]

    # Restart: stop the worker, open the workspace afresh: everything recorded is still there.
    before = {r["id"]: (r["state"], r["record"]) for r in ws.list()}
    events = len(ws.events(parent))
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    again = Store(ws.root)
    assert {r["id"]: (r["state"], r["record"]) for r in again.list()} == before
    assert len(again.events(parent)) == events
    assert not jobs.worker_status(again)["alive"]
    late = jobs.submit(TRIVIAL, again)
    start_worker(again)
    assert wait_state(again, late, ("done", "failed"))["state"] == "done"


def test_ensure_worker_starts_exactly_one(ws, monkeypatch):
    monkeypatch.setenv("SLIMBENCH_WORKER_IDLE_EXIT", "2")
    results = []
    threads = [threading.Thread(target=lambda: results.append(jobs.ensure_worker(Store(ws.root)))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    status = wait_for(lambda: (s := jobs.worker_status(ws))["pid"] and s, 10, "the worker to register")
    assert status["alive"] and status["backend"] == "local" and status["concurrency"] >= 1
    pid = status["pid"]
    wait_for(lambda: not _alive(pid), 30, "the idle worker to exit")


@pytest.mark.fast
def test_no_job_can_start_from_or_learn_from_an_int8_model(ws):
    """An INT8 ONNX Runtime result cannot be trained further: refused when queued, not minutes later."""
    from engine.spec import SpecError
    base = jobs.submit(TRIVIAL, ws)
    int8 = jobs.submit({**TRIVIAL, "model": {"from_run": base}, "method": {"name": "quantize_int8"}}, ws)
    with pytest.raises(SpecError, match=r"model.from_run: run .* makes an INT8 ONNX Runtime model"):
        jobs.submit({**TRIVIAL, "model": {"from_run": int8}, "method": {"name": "prune_unstructured"}}, ws)
    with pytest.raises(SpecError, match=r"method.params.teacher: run .* makes an INT8 ONNX Runtime model"):
        jobs.submit({**TRIVIAL, "model": {"from_run": base}, "method": {"name": "distill",
                                                                        "params": {"teacher": int8}}}, ws)
    jobs.submit({**TRIVIAL, "model": {"from_run": base}, "method": {"name": "distill", "params": {"teacher": base}}},
                ws)
    with pytest.raises(SpecError, match=r"method.params.teacher: no run '20990101-000000-000000'"):
        jobs.submit({**TRIVIAL, "model": {"from_run": base}, "method": {"name": "distill",
                                                                        "params": {"teacher": "20990101-000000-000000"}}},
                    ws)
    assert len(ws.list()) == 3  # the refused jobs were never queued


def test_a_cuda_job_the_local_worker_cannot_run_is_refused_when_queued(ws, monkeypatch):
    """The local worker runs on this machine, so a missing GPU is said at once (the job failed when
    it started); a Ray cluster's machines may have one, so there the job is queued."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SpecError) as e:
        jobs.submit({**TRIVIAL, "train": {"device": "cuda"}}, ws)
    assert e.value.field == "train.device" and "no CUDA device" in str(e.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(SpecError, match=r"has 2 CUDA device\(s\) \(cuda:0 to cuda:1\)"):
        jobs.submit({**TRIVIAL, "train": {"device": "cuda:2"}}, ws)
    assert ws.list() == []
    jobs.submit({**TRIVIAL, "train": {"device": "cuda:1"}}, ws)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("SLIMBENCH_BACKEND", "ray")
    jobs.submit({**TRIVIAL, "train": {"device": "cuda"}}, ws)
    assert [r["state"] for r in ws.list()] == ["queued", "queued"]


@pytest.mark.fast
def test_waiting_for_names_the_need_submitted_first_not_the_smallest_id(ws):
    """Ids made within one second sort by their random suffix: "waiting for" must follow
    submission order (it named the teacher before the base in one CI run)."""
    base = ws.create(SHORT, run_id="20261123-120000-ffffff")
    teacher = ws.create(SHORT, run_id="20261123-120000-000000", parent=base)
    student = ws.create(TRIVIAL, parent=base, deps=[("method.params.teacher", teacher)])
    assert teacher < base  # the trap: the id order is the reverse of the submission order
    waiting = {j["id"]: j["waiting_for"] for j in jobs.list_jobs(ws)}
    assert waiting[student] == base and waiting[teacher] == base and waiting[base] is None


def test_a_job_waits_for_the_runs_its_parameters_name_and_fails_with_theirs(ws):
    """A teacher or sensitivity run named in the parameters is a dependency like model.from_run:
    a free worker slot must not start the job before it is done (it failed when started early)."""
    base = jobs.submit(SHORT, ws)
    teacher = jobs.submit({**SHORT, "model": {"from_run": base}, "train": {"epochs": 2}}, ws)
    student = jobs.submit({**TRIVIAL, "model": {"from_run": base},
                           "method": {"name": "distill", "params": {"teacher": teacher, "epochs": 1}}}, ws)
    doomed_teacher = jobs.submit(SHORT, ws)
    doomed = jobs.submit({**TRIVIAL, "model": {"from_run": base},
                          "method": {"name": "distill", "params": {"teacher": doomed_teacher, "epochs": 1}}}, ws)
    jobs.cancel(doomed_teacher, ws)
    waiting = {j["id"]: j["waiting_for"] for j in jobs.list_jobs(ws)}
    assert waiting[student] == base  # the first of what it needs

    start_worker(ws, "--concurrency", "2")
    rows = {i: wait_state(ws, i, ("done", "failed")) for i in (base, teacher, student)}
    assert [rows[i]["state"] for i in (base, teacher, student)] == ["done"] * 3, rows[student]["error"]
    assert rows[student]["started"] >= rows[teacher]["finished"]
    d_row = wait_state(ws, doomed, ("failed",))
    assert d_row["error"].startswith(f"method.params.teacher: run {doomed_teacher} ended cancelled")


def test_a_killed_foreground_run_is_found_stale_and_can_be_retried(ws):
    """`engine run` has no worker watching it: it beats by itself while alive, so a run whose
    process is killed becomes interrupted (it stayed "running" for ever) and can be retried."""
    spec_path = ws.root / "long.json"
    ws.root.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(LONG))
    env = {**os.environ, "SLIMBENCH_HOME": str(ws.root)}
    proc = subprocess.Popen([sys.executable, "-m", "engine", "run", str(spec_path)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        row = wait_for(lambda: (rows := ws.list("running")) and rows[0], 120, "the run to start")
        time.sleep(2 * float(os.environ["SLIMBENCH_STALE_S"]))     # alive: its own beats keep it running
        assert ws.get(row["id"])["state"] == "running" and not jobs.recover_stale(ws)
    finally:
        proc.kill()
        proc.wait()
    row = wait_for(lambda: (r := jobs.list_jobs(ws)[0])["state"] != "running" and r, 30, "recovery")
    assert row["state"] == "interrupted" and "heartbeat" in row["error"]
    assert jobs.retry(row["id"], ws) == row["id"] and ws.get(row["id"])["state"] == "queued"


def _stop(store: Store, *pids: int) -> None:
    """SIGSTOP ``pids`` at a moment none of them holds the store's write lock (a process stopped inside
    a transaction blocks every writer until it resumes: that is SQLite, not what is tested here)."""
    import sqlite3
    for _ in range(100):
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        db = sqlite3.connect(store.db_path, timeout=0.2, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            _resume(*pids)
            time.sleep(0.05)
        finally:
            db.close()
    raise AssertionError("the processes always held the store's write lock")


def _resume(*pids: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def test_a_stalled_job_is_not_declared_dead_and_never_runs_twice(ws):
    """Issue 24 #8 with real processes: a worker and its job stopped (SIGSTOP) for longer than
    SLIMBENCH_STALE_S. Its process lives, so the job stays running and cannot be retried. Marked
    interrupted from elsewhere (a reader on another host cannot ask its pid), retry still refuses while
    the process lives; requeued anyway and claimed by a second worker, the first attempt, resumed, writes
    nothing more: one "done", one set of epochs, the stale error cleared."""
    epochs = 3
    job_id = jobs.submit({**SHORT, "train": {"epochs": epochs}}, ws)
    first = start_worker(ws)
    wait_for(lambda: any(e["phase"] == "train" for e in ws.events(job_id)), 120, "training to start")
    old = ws.get(job_id)
    assert old["pid"] != first.pid and old["host"] and old["pid_start"] and old["lease"]
    _stop(ws, first.pid, old["pid"])
    try:
        time.sleep(2 * float(os.environ["SLIMBENCH_STALE_S"]))
        assert jobs.recover_stale(ws) == [] and jobs.list_jobs(ws)[0]["state"] == "running"
        with pytest.raises(SpecError, match="only interrupted, failed, cancelled"):
            jobs.retry(job_id, ws)

        assert ws.interrupt_stale(time.time(), "no heartbeat (seen from another host)") == [job_id]
        with pytest.raises(SpecError, match=f"pid {old['pid']}\\) is still running"):
            jobs.retry(job_id, ws)
        assert ws.get(job_id)["state"] == "interrupted"

        requeued_at = ws.events(job_id)[-1]["seq"]
        ws.requeue(job_id, jobs.RETRYABLE)                           # as a host that cannot see the pid would
        start_worker(ws)
        new = wait_for(lambda: (r := ws.get(job_id))["state"] == "running" and r["pid"] not in (None, first.pid,
                                                                                             old["pid"]) and r,
                       120, "a second attempt")
        assert new["lease"] != old["lease"]
    finally:
        _resume(first.pid, old["pid"])
    wait_for(lambda: not _alive(old["pid"]), 60, "the first attempt to stop")
    row = wait_state(ws, job_id, ("done", "failed", "interrupted"))
    assert row["state"] == "done" and row["error"] is None and row["attempts"] == 2, row
    log = jobs.job_log(job_id, ws, tail=2000)
    assert log.count("done: accuracy") == 1 and "no longer holds it" in log
    later = [e for e in ws.events(job_id) if e["seq"] > requeued_at]
    assert sum(e["phase"] == "train:val" for e in later) == epochs    # the first attempt added none
    assert (ws.run_dir(job_id) / "model.pt").is_file() and (ws.run_dir(job_id) / "result.json").is_file()
    assert json.loads((ws.run_dir(job_id) / "result.json").read_text())["run_id"] == job_id


def test_a_finished_job_clears_the_error_it_was_marked_with_while_it_ran(ws):
    job_id = jobs.submit(SHORT, ws)
    start_worker(ws)
    wait_for(lambda: ws.get(job_id)["pid"] and ws.events(job_id)[-1]["phase"] != "queued", 120, "the job to run")
    ws.interrupt_stale(time.time(), "no heartbeat (seen from another host)")
    row = wait_state(ws, job_id, ("done", "failed"))
    assert (row["state"], row["error"]) == ("done", None)


@pytest.mark.fast
def test_stale_recovery_asks_the_process_and_cleans_what_it_interrupts(ws):
    """A job whose heartbeat is old but whose process lives here (stopped too) stays running; a dead
    one, or a later process that reuses its pid, is interrupted, and its half-written model files go
    (kill -9 during measurement left model.pt and model.onnx behind)."""
    from engine import procs
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        ids = {}
        for name, (pid, started) in {"alive": (sleeper.pid, procs.start_time(sleeper.pid)),
                                     "reused": (sleeper.pid, procs.start_time(sleeper.pid) - 1),
                                     "dead": (2 ** 22 + 7, None)}.items():
            ids[name] = ws.create({**TRIVIAL, "name": name})
            ws.claim(name, jobs._orphan_reason)
            ws.update(ids[name], pid=pid, host=procs.host(), pid_start=started, heartbeat=time.time() - 100)
            for artefact in ("model.pt", "model.onnx", ".model.pt.123.tmp"):
                (ws.run_dir(ids[name]) / artefact).write_bytes(b"half")
        sleeper.send_signal(signal.SIGSTOP)
        assert sorted(jobs.recover_stale(ws)) == sorted([ids["reused"], ids["dead"]])
        assert ws.get(ids["alive"])["state"] == "running"
        assert {p.name for p in ws.run_dir(ids["alive"]).iterdir()} >= {"model.pt", "model.onnx"}
        for name in ("reused", "dead"):
            assert ws.get(ids[name])["state"] == "interrupted"
            assert not {p.name for p in ws.run_dir(ids[name]).iterdir()} & {"model.pt", "model.onnx",
                                                                            ".model.pt.123.tmp"}
        sleeper.send_signal(signal.SIGCONT)
        sleeper.kill()
        sleeper.wait()
        assert jobs.recover_stale(ws) == [ids["alive"]]
        assert not (ws.run_dir(ids["alive"]) / "model.onnx").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.fast
def test_a_job_whose_parent_was_interrupted_says_what_to_do(ws):
    """It used to show a plain "queued", and a worker started for it claimed nothing and exited."""
    parent = ws.create({**TRIVIAL, "name": "parent"})
    child = ws.create({**TRIVIAL, "name": "child", "model": {"from_run": parent}, "method": {"name": "prune"}})
    assert jobs.claim(ws, "w")[0] == parent
    ws.finish_running(parent, "interrupted", "no heartbeat")
    want = f"waiting for {parent}, which was interrupted: retry it or cancel this"
    row = next(r for r in jobs.list_jobs(ws) if r["id"] == child)
    assert (row["state"], row["waiting_for"], row["waiting"]) == ("queued", parent, want)
    assert jobs.stuck_jobs(ws) == {child: want}
    from engine import results
    assert results.job_progress({**row, "last_event": {"phase": "queued"}})["phase"] == want
    assert want in cli("jobs", home=ws.root).stdout
    assert jobs.claim(ws, "w") is None
    jobs.retry(parent, ws)
    row = next(r for r in jobs.list_jobs(ws) if r["id"] == child)
    assert row["waiting"] == f"waiting for {parent}" and jobs.stuck_jobs(ws) == {}
