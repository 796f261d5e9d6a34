"""Product-level: the Quick tour (CPU) preset through the real queue and worker, timed end to end."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from engine import jobs, presets
from engine.store import FINAL_STATES, Store


def run(timeout_s: float = 1800) -> dict:
    home = Path(tempfile.mkdtemp(prefix="slimbench-tour-"))
    os.environ["SLIMBENCH_HOME"] = str(home)
    store = Store(home)
    plan, problems = presets.check(presets.quick_tour())
    t0 = time.perf_counter()
    ids = presets.launch(plan, lambda s: jobs.submit(s, store))
    while time.perf_counter() - t0 < timeout_s:
        rows = [store.get(i) for i in ids]
        if all(r["state"] in FINAL_STATES for r in rows):
            break
        jobs.ensure_worker(store)
        time.sleep(2)
    wall = time.perf_counter() - t0
    rows = [store.get(i) for i in ids]
    return {"wall_s": wall, "jobs": len(ids), "problems": problems,
            "states": {r["method"]: r["state"] for r in rows},
            "failed": [f"{r['method']}: {r['error']}" for r in rows if r["state"] != "done"]}


def section() -> str:
    r = run()
    verdict = "met" if r["wall_s"] < 600 and not r["failed"] else (
        f"missed by {r['wall_s'] - 600:.0f} s" if r["wall_s"] >= 600 else "jobs failed")
    lines = ["### Quick tour (CPU) wall time", "",
             f"- {r['jobs']} jobs (a baseline + every registered method at a small setting, Fashion-MNIST), submitted "
             f"through `engine.jobs` and run by the real worker: **{r['wall_s']:.0f} s** (target < 600 s — {verdict})",
             f"- Done: {sum(s == 'done' for s in r['states'].values())}/{r['jobs']}"]
    lines += [f"- Not done: {f}" for f in r["failed"]]
    lines += [f"- Left out of the plan: {p}" for p in r["problems"]]
    return "\n".join(lines)
