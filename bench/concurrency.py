"""Concurrency on CPU, measured: the same set of short Quick-tour-sized jobs (CIFAR ResNet-20, Fashion-MNIST
at 16 px) run by the real worker one at a time (each job on every core's thread) and two at a time (each
on its share: cores // 2 threads, as ``engine.backends.local`` splits them), interleaved A B A B ... so a
drift in the machine's load shows as disagreement between repeats instead of as a difference of modes.

``python -m bench.concurrency [--jobs 2] [--repeats 2] [--limit 3000] [--epochs 1] [--modes 1x2,2x1,1x1]``
prints one JSON line per set and a summary; each set runs in a fresh workspace of its own (under $TMPDIR).
A mode is jobs at once x torch threads each; 1x1 tells a gain of fewer threads from one of running side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine import jobs
from engine.store import FINAL_STATES, Store
from engine.worker import Worker


def job_spec(i: int, limit: int, epochs: int) -> dict[str, Any]:
    """One short tour-like job: trains, scores the test set and times itself, as every tour row does."""
    return {"name": f"concurrency probe {i}", "data": {"name": "fashion-mnist", "limit": limit, "val_fraction": 0.02,
                                                        "image_size": 16, "test_limit": 1000},
            "model": {"arch": "resnet20"}, "method": {"name": "baseline", "params": {}},
            "train": {"epochs": epochs, "device": "cpu", "seed": i},
            "measure": {"onnx": False, "latency_runs": 10, "warmup_runs": 2, "paired_rounds": 0}}


def run_set(concurrency: int, specs: list[dict[str, Any]], threads: int | None = None) -> dict[str, Any]:
    """Run ``specs`` through a worker holding ``concurrency`` jobs at a time, each on ``threads`` torch threads
    (default: the worker's own split, cores // concurrency); wall seconds from the first submit to the last
    job's finish (its record's own clock, so the worker's idle exit is not counted)."""
    home = Path(tempfile.mkdtemp(prefix=f"slimbench-conc{concurrency}-"))
    os.environ["SLIMBENCH_HOME"] = str(home)
    store = Store(home)
    load0 = os.getloadavg()[0]
    t0 = time.time()
    ids = [jobs.submit(s, store, autostart=False) for s in specs]
    worker = Worker(store, concurrency=concurrency, exit_when_idle=1.0)
    if threads:
        worker.backend.threads = threads
    worker.run()
    rows = [store.get(i) for i in ids]
    bad = [r["state"] for r in rows if r["state"] != "done"]
    if bad or not all(r["state"] in FINAL_STATES for r in rows):
        raise RuntimeError(f"probe jobs did not all finish: {bad}")
    recs = [r["record"] for r in rows]
    return {"concurrency": concurrency, "threads_per_job": threads or max(1, (os.cpu_count() or 1) // concurrency),
            "wall_s": round(max(r["finished"] for r in recs) - t0, 1),
            "job_s": [round(sum(r["phase_seconds"].values()), 1) for r in recs],
            "train_s": [round(r["phase_seconds"]["train"], 1) for r in recs],
            "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--limit", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--modes", default="1x2,2x1", help="jobs at once x threads each, in the order run per repeat "
                    "(1x1 too: tells thread scaling from running jobs side by side)")
    a = ap.parse_args(argv)
    specs = [job_spec(i, a.limit, a.epochs) for i in range(a.jobs)]
    modes = [tuple(int(v) for v in m.split("x")) for m in a.modes.split(",")]
    sets = []
    for _ in range(a.repeats):
        for c, t in modes:
            sets.append({"mode": f"{c}x{t}", **run_set(c, specs, t)})
            print(json.dumps(sets[-1]), flush=True)
    by = {f"{c}x{t}": [s["wall_s"] for s in sets if s["mode"] == f"{c}x{t}"] for c, t in modes}
    out = {"cpus": os.cpu_count(), "jobs": a.jobs, "limit": a.limit, "epochs": a.epochs, "wall_s": by,
           "median_wall_s": {m: statistics.median(v) for m, v in by.items()}}
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
