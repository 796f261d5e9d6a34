"""``python -m bench autocompress [--minutes 20] [--base-epochs N]``: the auto-compress block of
docs/BENCHMARKS.md's CPU section. ``--gpu``: the GPU block instead (``bench.autocompress_gpu``).

Trains the Quick tour's base (``engine.presets.quick_tour()``'s data, architecture and measurement),
runs the hand-made presets on it (structured pruning to 50 % of the MACs, INT8, and the two chained),
then one auto-compress search minimising batch-1 CPU latency in the best runtime (each trial paired with
the base in the trial's fastest runtime; an INT8 trial's file in ONNX Runtime and in OpenVINO) within 1 pt of
validation accuracy, for ``--minutes`` of wall time: the start as INT8 and the seeded recipes (``search_space.SEEDS``)
first, short-fine-tune trials next, then the few on or near their front with the full recipe. Last, the
base, the front and the presets are timed again in one interleaved run in every runtime here
(``autocompress_retime``), so every speed-up in the table is paired. The block gives the budget used, the
trials run and stopped (and why), that table, the winner against the best preset, the issue's CPU target
(>= 4x smaller AND >= 2x faster at batch 1, fastest runtime against the base's fastest, within 1 pt) as
met, or missed by how much, and whether the front dominates the presets. Default settings: ~30 min on 2
quiet cores.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine import data as data_mod
from engine import measure, presets
from engine import models as models_mod
from engine.methods import search_latency
from engine.spec import DataSpec
from engine.runner import run_spec
from engine.store import Store

from . import autocompress_retime, report

SMALLER, FASTER, LIMIT_PT = 4.0, 2.0, 1.0   # the CPU target
# "Dominates or equals": a front model matches a preset within one test split's and one re-timing's noise.
EQUAL_PT, EQUAL_RATIO = 0.2, 0.05
RUNTIMES = autocompress_retime.RUNTIMES
FLOOR, FLOOR_WIDTH = "floor probe: the base's architecture at 1/8 width", 0.125
# The hand-made presets the search must match: the Quick tour's own structured recipe (its anchor's 2.1x fewer
# MACs, 3 fine-tune epochs at the rewound LR), INT8, and the two chained.
_STRUCT = presets.QUICK_OVERRIDES["prune_structured"]
PRESETS = {
    f"structured {1 / _STRUCT['target_macs']:.1f}x fewer MACs": {"name": "prune_structured", "params": dict(_STRUCT)},
    "INT8": {"name": "quantize_int8", "params": {}},
    f"structured {1 / _STRUCT['target_macs']:.1f}x -> INT8": {"name": "pipeline", "params": {"steps": [
        {"name": "prune_structured", "params": dict(_STRUCT)}, {"name": "quantize_int8", "params": {}}]}},
}


def log(msg: str) -> None:
    print(f"[bench autocompress {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def figures(label: str, kind: str, rec: dict[str, Any], base: dict[str, Any], timed: dict[str, Any] | None,
            val_drop_pt: float | None = None) -> dict[str, Any]:
    """One table row: what the model costs against the base (speed from the closing interleaved re-timing,
    ``timed``: its entry in ``autocompress_retime.retime``), and its accuracy."""
    t = timed or {}
    size = base.get("size_bytes") / rec["size_bytes"] if base.get("size_bytes") and rec.get("size_bytes") else None
    return {"model": label, "kind": kind, "run": rec.get("run_id"), "accuracy": rec.get("accuracy"),
            "drop_pt": 100 * (base["accuracy"] - rec["accuracy"]) if rec.get("accuracy") is not None else None,
            "val_drop_pt": val_drop_pt, "x_smaller": size, "fastest_runtime": t.get("fastest"),
            "x_faster_same": t.get("x_faster_same"), "x_faster_best": t.get("x_faster_vs_base_fastest"),
            "refused": "; ".join(f"{rt}: {why}" for rt, why in (t.get("refused") or {}).items()) or None}


def target_misses(row: dict[str, Any]) -> list[str]:
    """The target's bounds ``row`` fails, each with by how much ([]: met). Accuracy: the validation drop the
    search chose on, the test drop for a preset (which no search chose). Speed: its fastest runtime against
    the base's fastest, from the closing interleaved re-timing."""
    out = []
    drop = row["val_drop_pt"] if row["val_drop_pt"] is not None else row["drop_pt"]
    if drop is None or drop > LIMIT_PT:
        out.append("accuracy: ?" if drop is None else
                   f"accuracy: {drop:.2f} pt lost > {LIMIT_PT:g} pt (over by {drop - LIMIT_PT:.2f} pt)")
    small = row["x_smaller"] or 0
    if small < SMALLER:
        out.append(f"size: {small:.2f}x smaller < {SMALLER:g}x (short by {SMALLER - small:.2f}x)")
    fast = row["x_faster_best"] or 0
    if fast < FASTER:
        out.append(f"speed: {fast:.2f}x faster (fastest runtime vs the base's) < {FASTER:g}x "
                   f"(short by {FASTER - fast:.2f}x)")
    return out


def dominated_by(preset: dict[str, Any], front: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A front model at least as good as ``preset`` on test accuracy, size and speed (fastest runtimes), each
    within the noise of one re-timing / test split (``EQUAL_PT``, ``EQUAL_RATIO``); None if none is."""
    def ok(f: dict[str, Any]) -> bool:
        return (f["accuracy"] is not None and preset["accuracy"] is not None
                and 100 * (preset["accuracy"] - f["accuracy"]) <= EQUAL_PT
                and (f["x_smaller"] or 0) >= (preset["x_smaller"] or 0) * (1 - EQUAL_RATIO)
                and (f["x_faster_best"] or 0) >= (preset["x_faster_best"] or 0) * (1 - EQUAL_RATIO))
    return next((f for f in front if ok(f)), None)


def floor_line(rt: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """Why speed may be out of reach: how much faster the base's architecture at 1/8 width runs than the base
    (each in its fastest runtime, from the same interleaved re-timing). Below the speed target, the per-call cost
    of the net's layers, not its MACs, sets batch-1 latency here, and no width cut can reach the target."""
    f = rt["models"].get(FLOOR)
    if not f or not f.get("x_faster_vs_base_fastest"):
        return []
    x = f["x_faster_vs_base_fastest"]
    cut = base["macs"] / rt["floor_macs"] if base.get("macs") and rt.get("floor_macs") else None
    verdict = (f"below the {FASTER:g}x target: at batch 1 here the per-call cost of the net's layers, not its MACs, "
               "sets the latency, so no width cut of this depth (pruning, low-rank of the same layers) can reach it; "
               "only fewer layers (a shallower student) or larger batches could"
               if x < FASTER else f"above the {FASTER:g}x target: width cuts are not bounded by per-call cost here")
    return ["- Why (speed): the base's architecture at 1/8 width (untrained, timed only"
            + (f"; {cut:.0f}x fewer MACs" if cut else "") + f") runs **{x:.2f}x** faster than the base in "
            f"{f['fastest']} (same interleaved re-timing): {verdict}."]


def section(res: dict[str, Any]) -> str:
    """The markdown block from a finished bench: ``res`` has base, presets ({label: record}), search (its
    record), front_records ({run_id: record}), retimed (``autocompress_retime.retime``'s result, keyed by the
    rows' labels), minutes, seconds."""
    base, search, rt = res["base"], res["search"], res["retimed"]
    rows = [figures(label, "preset", rec, base, rt["models"].get(label)) for label, rec in res["presets"].items()]
    front = []
    for t in search["search_front"]:
        label = f"trial {t['trial']}: {t['recipe']}"
        front.append({**figures(label, "search front", res["front_records"][t["run_id"]], base,
                                rt["models"].get(label), t["drop_pt"]),
                      "x_faster_search": 1 / t["cost_ratio"] if t.get("cost_ratio") else None,
                      "search_runtime": t.get("runtime")})
    base_row = {**figures("base", "base", base, base, rt["models"].get("base")), "val_drop_pt": 0.0}
    trials = search["search_trial_list"]
    stopped = [t for t in trials if t["state"] in ("pruned", "fail")]
    promoted = [t for t in trials if t.get("promoted_from") is not None]
    winner = next((r for r in front if r["run"] == search["search_winner"]), None)
    best_preset = max((r for r in rows if r["drop_pt"] is not None and r["drop_pt"] <= LIMIT_PT),
                      key=lambda r: r["x_faster_best"] or 0, default=None)
    refused = [f"{r['model']}: {r['refused']}" for r in [base_row, *front, *rows] if r["refused"]]
    lines = ["### Auto-compress", "",
             f"{res['about']} Search: objective latency (CPU, batch 1, best runtime) within {LIMIT_PT:g} pt of validation "
             f"accuracy, budget {res['minutes']:g} min; the whole bench took {res['seconds'] / 60:.1f} min.", "",
             f"- Budget used: {search['search_seconds'] / 60:.1f} of {res['minutes']:g} min (no trial starts after "
             f"the budget; one running then finishes), {search['search_trials']} trial(s) finished or stopped, "
             f"{len(promoted)} of them the full recipe of a short-fine-tune trial on or near the front.",
             f"- Trials stopped early: {len(stopped)}" + ("" if not stopped else ": " + "; ".join(
                 f"trial {t['trial']} ({t['recipe']}): {t['why']}" for t in stopped)),
             f"- Search timing: {search.get('search_timing') or 'as each run timed it'} (\"x faster (search, "
             "paired)\": what the search chose on).",
             "- Selection on the validation split; only the front was scored on the test split (accuracy column).",
             f"- Table timing: after the search, the base, the front and the presets were timed again in one "
             f"interleaved run ({rt['rounds']} rounds visiting every model × runtime, forward then backward, batch 1, "
             f"{rt['threads']} thread(s)) in every runtime here ({', '.join(RUNTIMES)}; an INT8 model's file in each "
             "INT8 runtime here, refused where its top-1 disagrees with its own format's runtime). \"x faster, same "
             "runtime\": median of the per-round ratios against the base in the model's fastest runtime (an INT8 "
             "model: the FP32 base in the runtime it runs in); \"x faster vs the base's "
             f"fastest\": the model in its fastest runtime against the base in the base's ({rt['base_fastest']}), "
             "how the target is judged."
             + (" Runtimes that could not run here: " + "; ".join(f"{k}: {v}" for k, v in rt["missing"].items()) + "."
                if rt["missing"] else "")
             + (" Refused (outputs disagree with eager, or an INT8 file's with its own runtime): "
                + "; ".join(refused) + "." if refused else ""),
             "", report.table([base_row, *front, *rows],
                              [("model", "model"), ("kind", "kind"), ("accuracy", "test top-1", report.top1),
                               ("drop_pt", "test drop", report.points), ("val_drop_pt", "val drop", report.points),
                               ("x_smaller", "x smaller", report.times), ("fastest_runtime", "fastest runtime"),
                               ("x_faster_same", "x faster, same runtime", report.times),
                               ("x_faster_best", f"x faster vs the base's fastest ({rt['base_fastest']})",
                                report.times),
                               ("x_faster_search", "x faster (search, paired)", report.times)]), ""]
    if winner is None:
        lines.append(f"- Winner: none. {search['search_why']}")
    else:
        lines.append(f"- Winner: {winner['model']}: {winner['x_smaller'] or 0:.2f}x smaller, "
                     f"{winner['x_faster_best'] or 0:.2f}x faster vs the base's fastest runtime, val drop "
                     f"{winner['val_drop_pt']:.2f} pt, test drop {winner['drop_pt']:.2f} pt.")
    if best_preset is not None:
        lines.append(f"- Best preset within {LIMIT_PT:g} pt (test): {best_preset['model']}: "
                     f"{best_preset['x_smaller'] or 0:.2f}x smaller, {best_preset['x_faster_best'] or 0:.2f}x faster "
                     "vs the base's fastest runtime" + ("" if winner is None else "; the winner is " + (
                         "as fast or faster" if (winner["x_faster_best"] or 0) >= (best_preset["x_faster_best"] or 0)
                         else "slower") + "."))
    else:
        lines.append(f"- No preset kept within {LIMIT_PT:g} pt on the test split.")
    met = [r for r in front if not target_misses(r)]
    head = (f"- Target (>= {SMALLER:g}x smaller and >= {FASTER:g}x faster at batch 1, fastest runtime vs the base's, "
            f"within {LIMIT_PT:g} pt)")
    if met:
        lines.append(f"{head}: **met** by {met[0]['model']}.")
    else:
        near = min(front or rows, key=lambda r: (len(target_misses(r)), -(r["x_faster_best"] or 0)))
        lines.append(f"{head}: **missed**; closest: {near['model']}: " + "; ".join(target_misses(near)) + ".")
        lines += floor_line(rt, base)
    # a preset outside the accuracy limit is no answer to the question asked, so the front need not beat it
    eligible = [r for r in rows if r["drop_pt"] is not None and r["drop_pt"] <= LIMIT_PT]
    outside = [r["model"] for r in rows if r not in eligible]
    beaten = {r["model"]: dominated_by(r, front) for r in eligible}
    lines.append(f"- Front dominates the presets kept within {LIMIT_PT:g} pt (test top-1 within {EQUAL_PT:g} pt, size "
                 f"and speed within {EQUAL_RATIO:.0%}): " + ("**met**: " if all(beaten.values()) else "**missed**: ")
                 + ("; ".join(f"{p} by {f['model']}" if f else f"{p} not matched by any front model"
                              for p, f in beaten.items()) or "no preset kept within the limit")
                 + (f" (outside the limit, not compared: {', '.join(outside)})" if outside else "") + ".")
    return "\n".join(lines)


def run(store: Store, minutes: float, base_epochs: int, limit: int | None, trials: int, parallel: int,
        dataset: str | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    data = dict(presets.QUICK_DATA) if dataset is None else {"name": dataset}
    if limit:
        data["limit"] = limit
        data["test_limit"] = max(100, limit // 3)
    measuring = {**presets.QUICK_MEASURE, "deploy": True}
    train = {"epochs": base_epochs, "device": "cpu"}
    log(f"training the base ({presets.QUICK_ARCH}, {base_epochs} epoch(s) on {data['name']})")
    base = run_spec({"name": "autocompress bench: base", "data": data, "model": {"arch": presets.QUICK_ARCH},
                     "method": {"name": "baseline"}, "train": train, "measure": measuring}, store)
    start = {"data": data, "model": {"from_run": base["run_id"]}, "train": {"epochs": 1, "device": "cpu"},
             "measure": measuring}
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
    log("timing the base, the front and the presets again, in every runtime, in one interleaved run")
    retimed = retime_all(base, done, search, fronts, data)
    about = (f"Base: {presets.QUICK_ARCH} on {data['name']}" + (f" at {data['image_size']} px" if "image_size" in data
             else "") + f", {base_epochs} epoch(s), test top-1 {base['accuracy']:.4f}.")
    return {"base": base, "presets": done, "search": search, "front_records": fronts, "minutes": minutes,
            "seconds": time.perf_counter() - t0, "about": about, "retimed": retimed}


def retime_all(base: dict[str, Any], done: dict[str, dict], search: dict[str, Any], fronts: dict[str, dict],
               data: dict[str, Any]) -> dict[str, Any]:
    """The closing interleaved re-timing (``autocompress_retime``), keyed by the section's row labels; FP32
    exports checked against eager on up to AGREEMENT_IMAGES test images."""
    checkpoints = {"base": base["checkpoint"], **{label: rec["checkpoint"] for label, rec in done.items()},
                   **{f"trial {t['trial']}: {t['recipe']}": fronts[t["run_id"]]["checkpoint"]
                      for t in search["search_front"]}}
    n = search_latency.AGREEMENT_IMAGES
    loaded = data_mod.load(DataSpec(**data))
    images = next(iter(loaded.loader("test", "cpu", limit=n, batch_size=n)))[0]
    shape = tuple(base["input_size"])
    # The per-call floor: the base's architecture at 1/8 width (untrained: timed only, never a candidate). If even
    # it is not FASTER x quicker than the base, no width cut of this depth can be, at batch 1 in these runtimes.
    floor = models_mod.build(presets.QUICK_ARCH, loaded.num_classes, small_input=True, width=FLOOR_WIDTH)
    out = autocompress_retime.retime(checkpoints, "base", shape, images,
                                     measure.timing_threads(presets.QUICK_MEASURE.get("threads")),
                                     extra={FLOOR: floor})
    out["floor_macs"] = measure.count_macs(floor, shape)["macs"]
    return out


def main(argv: list[str] | None = None) -> int:
    if "--gpu" in (argv if argv is not None else sys.argv[2:]):   # issue 21's GPU targets: a bench of its own
        from . import autocompress_gpu
        return autocompress_gpu.main(argv if argv is not None else sys.argv[2:])
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
