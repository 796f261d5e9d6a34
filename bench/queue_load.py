"""Queue load test: many trivial jobs from several concurrent submitter processes, all run by the
background worker they start on demand; every job must finish exactly once.

``run(n_jobs=100, submitters=4) -> dict`` (jobs/minute, overhead per job, exactly-once checks);
``section()`` gives the BENCHMARKS.md lines. The job is a real but trivial one (an untrained
MobileNetV3-small on a slice of digits, tiny measurement), so the figures are dominated by the queue:
claiming, process start, store writes, reaping.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import statistics
import tempfile
import time
from typing import Any

from engine import jobs
from engine.store import Store

TRIVIAL_JOB = {"data": {"name": "digits", "limit": 50, "test_limit": 20}, "model": {"arch": "mobilenet_v3_small"},
               "method": {"name": "baseline"}, "train": {"epochs": 0},
               "measure": {"onnx": False, "latency_runs": 1, "warmup_runs": 0, "batch_size": 2}}


def _submitter(home: str, first: int, count: int, out) -> None:
    """One submitting process: queues ``count`` jobs (auto-starting the worker if none is alive)."""
    os.environ["SLIMBENCH_HOME"] = home
    store = Store(home)
    ids = [jobs.submit({**TRIVIAL_JOB, "name": f"load-{first + i}"}, store) for i in range(count)]
    out.put(ids)


def run(n_jobs: int = 100, submitters: int = 4, timeout_s: float = 3600, home: str | None = None) -> dict[str, Any]:
    home = home or tempfile.mkdtemp(prefix="slimbench-queue-load-")
    env = {"SLIMBENCH_HOME": home, "SLIMBENCH_WORKER_IDLE_EXIT": "5"}
    saved = {k: os.environ.get(k) for k in (*env, "SLIMBENCH_NO_AUTOSTART")}
    os.environ.update(env)
    os.environ.pop("SLIMBENCH_NO_AUTOSTART", None)  # the submitters start the worker, as the dashboard does
    try:
        return _run(home, n_jobs, submitters, timeout_s)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run(home: str, n_jobs: int, submitters: int, timeout_s: float) -> dict[str, Any]:
    store = Store(home)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    shares = [n_jobs // submitters + (i < n_jobs % submitters) for i in range(submitters)]
    t0 = time.time()
    procs = [ctx.Process(target=_submitter, args=(home, sum(shares[:i]), n, out)) for i, n in enumerate(shares)]
    for p in procs:
        p.start()
    submitted = [i for _ in procs for i in out.get(timeout=timeout_s)]
    for p in procs:
        p.join()
    t_submitted = time.time()

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = store.list(state=("queued", "running"))
        if not rows:
            break
        time.sleep(0.5)
    rows = {r["id"]: r for r in store.list()}
    status = jobs.worker_status(store)
    if status["pid"]:
        try:
            os.kill(status["pid"], signal.SIGTERM)  # the worker the submitters started
        except ProcessLookupError:
            pass

    done = [r for r in rows.values() if r["state"] == "done"]
    t_last = max(r["finished"] for r in done) if done else time.time()
    wall = t_last - t0
    work = [r["record"]["finished"] - r["record"]["started"] for r in done]
    concurrency = status["concurrency"] or 1
    workers = {r["worker"] for r in rows.values()}
    return {
        "n_jobs": n_jobs, "submitters": submitters, "concurrency": concurrency,
        "submitted": len(submitted), "distinct_ids": len(set(submitted)), "in_store": len(rows),
        "done": len(done), "not_done": {i: r["state"] for i, r in rows.items() if r["state"] != "done"},
        "exactly_once": len(done) == n_jobs == len(set(submitted)) and all(r["attempts"] == 1 for r in done),
        "workers_started": len(workers),
        "submit_seconds": t_submitted - t0,
        "wall_seconds": wall,
        "jobs_per_minute": 60 * len(done) / wall if wall > 0 else None,
        "job_work_seconds_mean": statistics.fmean(work) if work else None,
        # Everything a job slot spends that is not the job's own work: claim, process start, imports,
        # data load, store writes, reaping (the worker polls every 0.2 s).
        "overhead_seconds_per_job": (wall * concurrency / len(done) - statistics.fmean(work)) if done else None,
        "home": home,
    }


def section() -> str:
    r = run()
    return "\n".join([
        "### Queue throughput", "",
        f"- {r['n_jobs']} trivial jobs (untrained MobileNetV3-small on 50 digits images, tiny measurement) submitted "
        f"from {r['submitters']} concurrent processes; {r['workers_started']} worker started on demand, "
        f"{r['concurrency']} job(s) at a time: **{r['jobs_per_minute']:.1f} jobs/minute**; "
        f"{r['done']}/{r['n_jobs']} done, each exactly once: **{'yes' if r['exactly_once'] else 'NO'}**",
        f"- Queue overhead per job (slot time minus the job's own work of {r['job_work_seconds_mean']:.2f} s): "
        f"**{r['overhead_seconds_per_job']:.2f} s**; all submissions took {r['submit_seconds']:.1f} s",
    ])


if __name__ == "__main__":
    import json
    import sys
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    print(json.dumps(run(n_jobs=n), indent=2, default=str))
