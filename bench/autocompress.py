"""``python -m bench autocompress [--minutes 20] [--base-epochs N]``: the auto-compress block of
docs/BENCHMARKS.md's CPU section.

Trains the Quick tour's base (``engine.presets.quick_tour()``'s data, architecture and measurement),
runs the hand-made presets on it (structured pruning to 50 % of the MACs, INT8, and the two chained),
then one auto-compress search minimising batch-1 CPU latency in the best runtime (each model's fastest
here, the base in its own fastest: how the target is judged) within 1 pt of validation accuracy, for
``--minutes`` of wall time. The block gives the budget used, the trials run and stopped (and why), the
search's Pareto front and the presets in one table, the winner against the best preset, and the
issue's CPU target (>= 4x smaller AND >= 2x faster at batch 1 in the fastest runtime, within 1 pt) as
met, or missed with the bound that failed. Default settings: ~25 min on 2 quiet cores.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine import presets
from engine.runner import run_spec
from engine.store import Store

from . import report

SMALLER, FASTER, LIMIT_PT = 4.0, 2.0, 1.0   # the CPU target
PRESETS = {
    "structured 50 % MACs": {"name": "prune_structured", "params": {"target_macs": 0.5, "finetune_epochs": 1}},
    "INT8": {"name": "quantize_int8", "params": {}},
    "structured 50 % -> INT8": {"name": "pipeline", "params": {"steps": [
        {"name": "prune_structured", "params": {"target_macs": 0.5, "finetune_epochs": 1}},
        {"name": "quantize_int8", "params": {}}]}},
}


def log(msg: str) -> None:
    print(f"[bench autocompress {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fastest(rec: dict[str, Any]) -> tuple[float | None, str | None]:
    """Batch-1 CPU latency in the fastest runtime the run was timed in: its own (``runtime``: eager PyTorch,
    or ONNX Runtime for an INT8 model, which has no deployment runs) or the best deployment runtime."""
    own = (rec.get("latency_ms"), rec.get("runtime"))
    best = (rec.get("best_latency_ms"), rec.get("best_runtime"))
    timed = [t for t in (own, best) if t[0]]
    return min(timed, key=lambda t: t[0]) if timed else (None, None)


def figures(label: str, kind: str, rec: dict[str, Any], base: dict[str, Any], val_drop_pt: float | None = None
            ) -> dict[str, Any]:
    """One table row: what the model costs against the base, and its accuracy."""
    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None
    best, runtime = fastest(rec)
    return {"model": label, "kind": kind, "run": rec.get("run_id"), "accuracy": rec.get("accuracy"),
            "drop_pt": 100 * (base["accuracy"] - rec["accuracy"]) if rec.get("accuracy") is not None else None,
            "val_drop_pt": val_drop_pt, "x_smaller": ratio(base.get("size_bytes"), rec.get("size_bytes")),
            "x_faster": ratio(base.get("latency_ms"), rec.get("latency_ms")),
            "x_faster_best": ratio(fastest(base)[0], best), "best_runtime": runtime}


def target_misses(row: dict[str, Any]) -> list[str]:
    """The target's bounds ``row`` fails ([]: met). Accuracy: the validation drop the search chose on,
    the test drop for a preset (which no search chose)."""
    out = []
    drop = row["val_drop_pt"] if row["val_drop_pt"] is not None else row["drop_pt"]
    if drop is None or drop > LIMIT_PT:
        out.append(f"accuracy: {'?' if drop is None else f'{drop:.2f}'} pt lost > {LIMIT_PT:g} pt")
    if (row["x_smaller"] or 0) < SMALLER:
        out.append(f"size: {row['x_smaller'] or 0:.2f}x smaller < {SMALLER:g}x")
    if (row["x_faster_best"] or 0) < FASTER:
        out.append(f"speed: {row['x_faster_best'] or 0:.2f}x faster (fastest runtime) < {FASTER:g}x")
    return out


def section(res: dict[str, Any]) -> str:
    """The markdown block from a finished bench: ``res`` has base, presets ({label: record}), search (its
    record) and front_records ({run_id: record}), minutes, seconds."""
    base, search = res["base"], res["search"]
    rows = [figures(label, "preset", rec, base) for label, rec in res["presets"].items()]
    front = [{**figures(f"trial {t['trial']}: {t['recipe']}", "search front", res["front_records"][t["run_id"]], base,
                        t["drop_pt"]), "x_faster_search": 1 / t["cost_ratio"] if t.get("cost_ratio") else None}
             for t in search["search_front"]]
    trials = search["search_trial_list"]
    stopped = [t for t in trials if t["state"] in ("pruned", "fail")]
    winner = next((r for r in front if r["run"] == search["search_winner"]), None)
    best_preset = max((r for r in rows if r["drop_pt"] is not None and r["drop_pt"] <= LIMIT_PT),
                      key=lambda r: r["x_faster_best"] or 0, default=None)
    lines = ["### Auto-compress", "",
             f"{res['about']} Search: objective latency (CPU, batch 1, best runtime) within {LIMIT_PT:g} pt of validation "
             f"accuracy, budget {res['minutes']:g} min; the whole bench took {res['seconds'] / 60:.1f} min.", "",
             f"- Budget used: {search['search_seconds'] / 60:.1f} of {res['minutes']:g} min (no trial starts after "
             f"the budget; one running then finishes), {search['search_trials']} trial(s) finished or stopped.",
             f"- Trials stopped early: {len(stopped)}" + ("" if not stopped else ": " + "; ".join(
                 f"trial {t['trial']} ({t['recipe']}): {t['why']}" for t in stopped)),
             f"- Latency timing: {search.get('search_timing') or 'as each run timed it'}.",
             "- Selection on the validation split; only the front was scored on the test split (accuracy column).",
             "- The search minimises each model's batch-1 latency in its fastest runtime here (an INT8 model in its "
             "own INT8 runtime), timed interleaved with the base in the base's fastest (\"x faster (search, "
             "paired)\"); the target is judged in the fastest runtime each run recorded, the base's included.",
             "", "Front and presets (ratios against the base; \"fastest runtime\": the one the x faster column "
             "before it uses):", "",
             report.table(front + rows, [("model", "model"), ("kind", "kind"), ("accuracy", "test top-1"),
                                          ("drop_pt", "test drop (pt)"), ("val_drop_pt", "val drop (pt)"),
                                          ("x_smaller", "x smaller"), ("x_faster", "x faster (eager/ORT)"),
                                          ("x_faster_best", "x faster (fastest runtime)"),
                                          ("best_runtime", "fastest runtime"),
                                          ("x_faster_search", "x faster (search, paired)")]), ""]
    if winner is None:
        lines.append(f"- Winner: none. {search['search_why']}")
    else:
        lines.append(f"- Winner: {winner['model']}: {winner['x_smaller']:.2f}x smaller, "
                     f"{winner['x_faster_best'] or 0:.2f}x faster in the fastest runtime, val drop "
                     f"{winner['val_drop_pt']:.2f} pt, test drop {winner['drop_pt']:.2f} pt.")
    if best_preset is not None:
        lines.append(f"- Best preset within {LIMIT_PT:g} pt (test): {best_preset['model']}: "
                     f"{best_preset['x_smaller'] or 0:.2f}x smaller, {best_preset['x_faster_best'] or 0:.2f}x faster "
                     "in the fastest runtime" + ("" if winner is None else "; the winner is " + (
                         "as fast or faster" if (winner["x_faster_best"] or 0) >= (best_preset["x_faster_best"] or 0)
                         else "slower") + " in the fastest runtime."))
    else:
        lines.append(f"- No preset kept within {LIMIT_PT:g} pt on the test split.")
    met = [r for r in front if not target_misses(r)]
    if met:
        lines.append(f"- Target (>= {SMALLER:g}x smaller and >= {FASTER:g}x faster at batch 1, fastest runtime, within "
                     f"{LIMIT_PT:g} pt): **met** by {met[0]['model']}.")
    else:
        near = min(front or rows, key=lambda r: len(target_misses(r)))
        lines.append(f"- Target (>= {SMALLER:g}x smaller and >= {FASTER:g}x faster at batch 1, fastest runtime, within "
                     f"{LIMIT_PT:g} pt): **missed**; closest: {near['model']}: " + "; ".join(target_misses(near)) + ".")
    return "\n".join(lines)


def run(store: Store, minutes: float, base_epochs: int, limit: int | None, trials: int, parallel: int,
        dataset: str | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    data = dict(presets.QUICK_DATA) if dataset is None else {"name": dataset}
    if limit:
        data["limit"] = limit
        data["test_limit"] = max(100, limit // 3)
    measure = {**presets.QUICK_MEASURE, "deploy": True}
    train = {"epochs": base_epochs, "device": "cpu"}
    log(f"training the base ({presets.QUICK_ARCH}, {base_epochs} epoch(s) on {data['name']})")
    base = run_spec({"name": "autocompress bench: base", "data": data, "model": {"arch": presets.QUICK_ARCH},
                     "method": {"name": "baseline"}, "train": train, "measure": measure}, store)
    start = {"data": data, "model": {"from_run": base["run_id"]}, "train": {"epochs": 1, "device": "cpu"},
             "measure": measure}
    done = {}
    for label, method in PRESETS.items():
        log(f"preset: {label}")
        done[label] = run_spec({**start, "name": f"autocompress bench: {label}", "method": method}, store)
    log(f"search: {minutes:g} min, at most {trials} trials, {parallel} at once")
    s0 = time.perf_counter()
    search = run_spec({**start, "name": "autocompress bench: search", "method": {"name": "autocompress", "params": {
        "objective": "latency", "runtime": "best", "batch": 1, "max_drop_pt": LIMIT_PT, "minutes": minutes,
        "trials": trials, "parallel": parallel}}}, store)
    search["search_seconds"] = time.perf_counter() - s0
    fronts = {t["run_id"]: store.get(t["run_id"])["record"] for t in search["search_front"]}
    about = (f"Base: {presets.QUICK_ARCH} on {data['name']}" + (f" at {data['image_size']} px" if "image_size" in data
             else "") + f", {base_epochs} epoch(s), test top-1 {base['accuracy']:.4f}.")
    return {"base": base, "presets": done, "search": search, "front_records": fronts, "minutes": minutes,
            "seconds": time.perf_counter() - t0, "about": about}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench autocompress")
    p.add_argument("--minutes", type=float, default=20.0, help="the search's wall-time budget")
    p.add_argument("--base-epochs", type=int, default=presets.QUICK_BASE_EPOCHS)
    p.add_argument("--trials", type=int, default=60, help="cap on trials (the minutes usually end it first)")
    p.add_argument("--parallel", type=int, default=1, help="trials at once (1: each timed with the cores to itself)")
    p.add_argument("--limit", type=int, default=None, help="cap on training images (tiny settings)")
    p.add_argument("--dataset", default=None, help="another dataset than the Quick tour's (e.g. digits, for a "
                   "smoke run)")
    p.add_argument("--no-write", action="store_true", help="print the block instead of writing BENCHMARKS.md")
    a = p.parse_args(argv)
    for name, v, lo, hi in (("--minutes", a.minutes, 0.01, 1e4), ("--base-epochs", a.base_epochs, 1, 1000),
                            ("--trials", a.trials, 1, 10000), ("--parallel", a.parallel, 1, 64)):
        if not lo <= v <= hi:
            print(f"error: {name}: must be between {lo:g} and {hi:g}, got {v}", file=sys.stderr)
            return 2
    home = os.environ.get("SLIMBENCH_HOME")
    store = Store(Path(home) if home else Path(tempfile.mkdtemp(prefix="slimbench-autocompress-")))
    res = run(store, a.minutes, a.base_epochs, a.limit, a.trials, a.parallel, a.dataset)
    body = section(res)
    if a.no_write:
        print(body)
    else:
        cmd = "python -m bench autocompress " + " ".join(argv if argv is not None else sys.argv[2:])
        log(f"wrote {report.write_block('cpu', 'autocompress', body, cmd.strip())}")
    return 0
