"""The results table: one row per finished run, with columns relative to the run's base.

Every number comes from a run's result record. "Base" is the root of the run's ``parent``
chain (the baseline it was ultimately compressed from); a run without a parent is its own base.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable, Iterable

import pandas as pd

from . import conditions, literature, phases, record
from .stats import wilson
from .store import Store

# Runs measured on the same test images: accuracies are comparable only within such a group. The hash
# is of the test split's content; records from before it was kept have none (NaN), and group by the rest.
TEST_SET = ["dataset", "num_classes", "test_images", "test_set_hash"]


# Methods whose run is an analysis of its start, not a model of its own (sensitivity returns its start
# unchanged): shown apart from the models, never on the front or as a winner.
ANALYSES = ("sensitivity",)


def is_analysis(rec: dict[str, Any]) -> bool:
    return rec.get("method") in ANALYSES


def pipeline_steps(recs: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Step run id -> the pipeline run that ran it (``pipeline_runs``): a pipeline is one row, its
    steps (each a run of its own, the last one the pipeline's model again) are listed under it."""
    return {step: r["run_id"] for r in recs if r and r.get("run_id")
            for step in r.get("pipeline_runs") or [] if isinstance(step, str)}


def pipeline_summary(rec: dict[str, Any]) -> str:
    """A pipeline's steps in order, e.g. "2 steps: prune_structured → quantize_int8"; "" for other runs."""
    steps = [s.get("method") for s in rec.get("pipeline_steps") or [] if isinstance(s, dict)]
    return f"{len(steps)} steps: " + " → ".join(map(str, steps)) if steps else ""


def columns() -> list[str]:
    """The results table's columns, from the record schema (read when called: fields added later count)."""
    return [f.name for f in record.table_fields()]


def cost_axes() -> dict[str, str]:
    """Axis choices for the accuracy-vs-cost plot: label -> column (lower is better on every one)."""
    return {f.label: f.name for f in record.cost_axes()}


def records(store: Store) -> list[dict[str, Any]]:
    """Result records of every finished run (newest first)."""
    return [r["record"] for r in store.list("done") if r.get("record")]


def _ratio(base: Any, value: Any) -> float:
    if not _num(base) or not _num(value) or value <= 0:
        return math.nan
    return float(base) / float(value)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _root(run_id: str, by_id: dict[str, dict[str, Any]]) -> str:
    seen = {run_id}
    while True:
        parent = by_id[run_id].get("parent")
        if not parent or parent not in by_id or parent in seen:
            return run_id
        seen.add(parent)
        run_id = parent


def _chain_steps(run_id: str, base_id: str, by_id: dict[str, dict[str, Any]],
                 step: Callable[[dict[str, Any]], float | None]) -> list[float] | None:
    """``step(record)`` of each run along the parent chain from ``run_id`` up to ``base_id`` (one
    step for a run compressed straight from its base, none for the base itself); None where a step
    has no value (older runs, or a chain through a checkpoint)."""
    values, seen = [], set()
    while run_id != base_id and run_id not in seen:
        seen.add(run_id)
        r = by_id[run_id]
        last = (r.get("pipeline_runs") or [None])[-1]
        if last in by_id and last not in seen:  # a pipeline's model is its last step's: follow its steps
            run_id = last
            continue
        v = step(r)
        if not _num(v):
            return None
        values.append(float(v))
        run_id = r["parent"]
    return values if run_id == base_id else None


def step_speedup(r: dict[str, Any], key: str = "paired_speedup") -> Any:
    """One step's paired speed-up over the model it started from, in the same runtime (``key``: CPU or
    GPU; with ``_range`` appended, its [slowest, fastest] rounds). An INT8 step counts against its own
    model in fp32 under ONNX Runtime (``int8_speedup``): timed against the PyTorch-eager start, the
    change of runtime would be credited to quantisation. Records since ``speedup_vs_eager_start``
    carry that figure as ``paired_speedup`` too; older INT8 records had the eager one there."""
    if key.startswith("paired_speedup") and r.get("int8_speedup") is not None:
        return r.get(key.replace("paired_speedup", "int8_speedup"))
    return r.get(key) if r.get("paired_ref") == r.get("parent") else None


def _paired_x_faster(run_id: str, base_id: str, by_id: dict[str, dict[str, Any]],
                     key: str = "paired_speedup") -> float:
    """Speed-up over the base from the runs' interleaved timings (``key``: CPU or GPU): the product
    of each step's paired ratio along the parent chain; NaN where a step has none."""
    steps = _chain_steps(run_id, base_id, by_id, lambda r: step_speedup(r, key))
    return math.prod(steps) if steps is not None else math.nan


def _paired_x_faster_range(run_id: str, base_id: str, by_id: dict[str, dict[str, Any]]) -> tuple[float, float]:
    """Lowest and highest paired speed-up over the base: the products of each step's slowest and
    fastest round. A range that spans 1x says the speed-up is within timing noise."""
    def end(i: int) -> float:
        def step(r: dict[str, Any]) -> float | None:
            rng = step_speedup(r, "paired_speedup_range")
            return rng[i] if isinstance(rng, list) and len(rng) == 2 else None
        steps = _chain_steps(run_id, base_id, by_id, step)
        return math.prod(steps) if steps is not None else math.nan
    return end(0), end(1)


def _delta_accuracy(r: dict[str, Any], base: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> float:
    """Accuracy minus the base's, on the same test images: the sum of each step's difference to the
    model it started from, both evaluated in that step's job. Where a step lacks that (older runs),
    the two records' accuracies, but only when their test sets match; else NaN."""
    if r["run_id"] == base["run_id"]:
        return 0.0 if _num(r.get("accuracy")) else math.nan
    steps = _chain_steps(r["run_id"], base["run_id"], by_id,
                         lambda s: s["accuracy"] - s["start_accuracy"]
                         if _num(s.get("accuracy")) and _num(s.get("start_accuracy")) else None)
    if steps is not None:
        return math.fsum(steps)
    same_test = all(r.get(k) == base.get(k) for k in ("dataset", "test_images", "test_set_hash"))
    if _num(r.get("accuracy")) and _num(base.get("accuracy")) and same_test:
        return r["accuracy"] - base["accuracy"]
    return math.nan


def _delta_uncertainty(r: dict[str, Any], base: dict[str, Any]) -> tuple[float, float, float]:
    """(CI low, CI high, McNemar p) of Δ accuracy, from the run's own paired comparison; only for a
    run compressed straight from its base (a chain's steps are not independent, so their intervals
    do not add up): NaN otherwise."""
    ci, p = r.get("delta_accuracy_ci95"), r.get("mcnemar_p")
    if r.get("parent") != base["run_id"] or not isinstance(ci, list) or len(ci) != 2 or not all(_num(v) for v in ci):
        return math.nan, math.nan, math.nan
    return float(ci[0]), float(ci[1]), float(p) if _num(p) else math.nan


def table(recs: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per record with base-relative columns: x smaller, x fewer MACs, x faster, Δ accuracy."""
    recs = [r for r in recs if r and r.get("run_id")]
    by_id = {r["run_id"]: r for r in recs}
    fields = record.table_fields()
    controls: dict[str, dict[str, Any]] = {}   # compressed run -> its newest control
    for c in sorted((r for r in recs if r.get("control_of")), key=lambda r: r.get("finished") or 0):
        controls[c["control_of"]] = c
    rows = []
    for r in recs:
        base = by_id[_root(r["run_id"], by_id)]
        row = {f.name: json.dumps(r.get(f.name) or {}, sort_keys=True) if f.kind == "json" else r.get(f.name)
               for f in fields if not f.base_relative}
        row["base_id"] = base["run_id"]
        row["delta_accuracy"] = _delta_accuracy(r, base, by_id)
        row["delta_ci_low"], row["delta_ci_high"], row["mcnemar_p"] = _delta_uncertainty(r, base)
        row["x_smaller"] = _ratio(base.get("size_bytes"), r.get("size_bytes"))
        row["x_smaller_onnx"] = _ratio(base.get("onnx_bytes"), r.get("onnx_bytes"))
        row["x_smaller_compressed"] = _ratio(base.get("compressed_bytes"), r.get("compressed_bytes"))
        row["x_fewer_macs"] = _ratio(base.get("macs"), r.get("macs"))
        # Interleaved timings beat latencies recorded by two jobs minutes apart; fall back to those.
        paired = _paired_x_faster(r["run_id"], base["run_id"], by_id)
        row["x_faster_paired"] = not math.isnan(paired) and r["run_id"] != base["run_id"]
        row["x_faster"] = paired if row["x_faster_paired"] else _ratio(base.get("latency_ms"), r.get("latency_ms"))
        row["x_faster_low"], row["x_faster_high"] = _paired_x_faster_range(r["run_id"], base["run_id"], by_id) \
            if row["x_faster_paired"] else (math.nan, math.nan)
        row["chance_level"] = chance_level(r) is not None
        row["flags"] = "; ".join(flags(r, base))
        row["runtime"] = runtime(r)
        row["control_verdict"] = control_verdict(controls.get(r["run_id"])) if r["run_id"] in controls else \
            (f"control of {r['control_of']}" if r.get("control_of") else None)
        gpu_paired = _paired_x_faster(r["run_id"], base["run_id"], by_id, "gpu_paired_speedup")
        row["gpu_x_faster"] = gpu_paired if not math.isnan(gpu_paired) and r["run_id"] != base["run_id"] \
            else _ratio(base.get("gpu_latency_ms"), r.get("gpu_latency_ms"))
        rows.append(row)
    raw = pd.DataFrame(rows, columns=[f.name for f in fields])
    cols = {}
    for f in fields:
        col = raw[f.name]
        if f.numeric:
            col = pd.to_numeric(col, errors="coerce")
        elif f.kind == "text":  # pandas 3 stores a missing string as NaN, which is truthy: `name or run_id`
            # then showed "nan" for every unnamed run (Compare's run picker, warnings, pipeline titles)
            col = col.astype(object).where(col.notna(), None)
        cols[f.name] = col
    # built at once: assigning ~100 columns one by one left a fragmented frame, and every later
    # `assign` on Compare warned (PerformanceWarning) and copied it
    return pd.DataFrame(cols, index=raw.index)


def control_verdict(c: dict[str, Any]) -> str:
    """A compressed run against its control (the control's record), in words: beaten only where the
    paired 95 % interval lies above zero."""
    d, ci = c.get("control_delta_pt"), c.get("control_delta_ci95_pt")
    if not _num(d) or not (isinstance(ci, list) and len(ci) == 2 and all(_num(v) for v in ci)):
        return f"control {c['run_id']} recorded no comparison"
    interval = f"95 % CI {ci[0]:+.1f} to {ci[1]:+.1f} pt, control {c['run_id']}"
    if ci[0] > 0:
        return f"beats its control by {d:.1f} pt ({interval})"
    if ci[1] < 0:
        return f"does not beat its control: {-d:.1f} pt below it ({interval})"
    return f"does not beat its control: {d:+.1f} pt, within test-set noise ({interval})"


def control_counterpart(method: str | None, x_fewer_macs: float | None) -> str | None:
    """Beside a run's control verdict: the published pruned − scratch figure nearest its method and MAC cut
    (``engine.literature``, Liu et al. 2019), or None where the literature has none for the method."""
    macs_x = float(x_fewer_macs) if _num(x_fewer_macs) else None
    return literature.counterpart_text(method or "", macs_x)


def literature_points(df: pd.DataFrame) -> pd.DataFrame:
    """The published points (``engine.literature``) for the bases in ``df`` whose arch and dataset the
    literature has, placed on our MAC axis: x = our base's MACs ÷ the published MAC reduction, y = the
    published accuracy (a fraction, as the plot's). One row per point and base arch/dataset."""
    cols = ["method", "family", "net", "dataset", "base_acc", "result_acc", "delta_pt", "mac_reduction", "macs",
            "accuracy", "setting", "source", "our_base"]
    rows = []
    bases = df[df["run_id"] == df["base_id"]].dropna(subset=["macs"])
    for (arch, dataset), group in bases.groupby(["arch", "dataset"], sort=True):
        base = group.sort_values("finished").iloc[-1]   # the newest base of this net and data
        for p in literature.matching(arch, dataset):
            rows.append({"method": p.method, "family": p.family, "net": p.net, "dataset": p.dataset,
                         "base_acc": p.base_acc, "result_acc": p.result_acc, "delta_pt": p.delta_pt,
                         "mac_reduction": p.mac_reduction, "macs": base["macs"] / p.mac_reduction,
                         "accuracy": p.result_acc / 100, "setting": p.setting, "source": p.source,
                         "our_base": base["run_id"]})
    return pd.DataFrame(rows, columns=cols)


def literature_gaps(df: pd.DataFrame, max_gap_pt: float = 1.0) -> list[str]:
    """Bases in ``df`` more than ``max_gap_pt`` below the best published base of their net and data, in
    words: their runs' Δ accuracy then starts from a weaker model than the literature's, and the
    published points are not like for like."""
    out = []
    for _, b in df[df["run_id"] == df["base_id"]].dropna(subset=["accuracy"]).iterrows():
        gap = literature.base_gap_pt(b["accuracy"], b["arch"], b["dataset"])
        if gap is not None and gap > max_gap_pt:
            best = max(p.base_acc for p in literature.matching(b["arch"], b["dataset"]))
            out.append(f"base {b['name'] or b['run_id']} ({b['arch']} on {b['dataset']}, {100 * b['accuracy']:.2f} %) "
                       f"is {gap:.1f} pt below the published base ({best:.2f} %)")
    return out


def still_learning(rec: dict[str, Any], rise: float = 0.01) -> str | None:
    """Why a base model may be under-trained, from its own training history (None if no sign):
    then a compressed run's fine-tuning is extra training, and its Δ accuracy mixes that gain in."""
    val = [h["val_acc"] for h in rec.get("history") or [] if h.get("phase") == "train" and _num(h.get("val_acc"))]
    if len(val) == 1:
        return "it trained for a single epoch"
    if len(val) > 1 and val[-1] - val[-2] > rise:
        return f"its validation accuracy still rose {100 * (val[-1] - val[-2]):.1f} points in its last epoch"
    return None


# A run whose answers are this concentrated on one class is not a classifier, whatever its accuracy.
ONE_CLASS_SHARE = 0.9


def chance_level(rec: dict[str, Any]) -> str | None:
    """Why a run's answers are no better than guessing (None when they are): its accuracy's 95 %
    Wilson interval reaches the better of the two blind guesses (1 / classes, or always the most
    common class of the test set), or more than ``ONE_CLASS_SHARE`` of its answers are one class.
    Such a run would sit on a Pareto front (tiny and "accurate" on a skewed test set) and win a
    size contest while being useless."""
    acc, k, n = rec.get("accuracy"), rec.get("num_classes"), rec.get("test_images")
    cm = rec.get("confusion")
    cm = cm if isinstance(cm, list) and cm and all(isinstance(row, list) and len(row) == len(cm) for row in cm) \
        and all(_num(v) for row in cm for v in row) else None
    total = sum(sum(row) for row in cm) if cm else 0
    if cm and total > 0:
        predicted = [sum(row[j] for row in cm) for j in range(len(cm))]
        top = max(range(len(cm)), key=predicted.__getitem__)
        if predicted[top] / total > ONE_CLASS_SHARE:
            return f"{100 * predicted[top] / total:.0f} % of its answers are class {top}"
    if not _num(acc) or not _num(k) or k < 2:
        return None
    guess, how = 1 / k, f"1 of {k:.0f} classes"
    if cm and total > 0 and max(sum(row) for row in cm) / total > guess:
        guess, how = max(sum(row) for row in cm) / total, "always the most common class"
    ci = rec.get("accuracy_ci95")
    if not (isinstance(ci, list) and len(ci) == 2 and all(_num(v) for v in ci)):
        ci = wilson(round(acc * n), int(n)) if _num(n) and n > 0 else None
    if ci is None or ci[0] > guess:
        return None
    return (f"accuracy {acc:.3f} (95 % CI {ci[0]:.3f}-{ci[1]:.3f}) is not above guessing "
            f"({how}: {guess:.3f})")


def flags(r: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """What would make a run's figures mislead, in words: answers at chance level, and a base that was
    still learning (every run of its chain then mixes extra training into Δ accuracy)."""
    out = []
    if why := chance_level(r):
        out.append("chance level: " + why)
    if why := still_learning(base):
        out.append(("may be under-trained: " if base["run_id"] == r["run_id"] else
                    f"its base {base['run_id']} may be under-trained: ") + why)
    if why := timed_under_load(r):
        out.append(why)
    return out


def timed_under_load(r: dict[str, Any]) -> str | None:
    """Which of the run's timings were taken while the cores were not free (None: none)."""
    what = [name for key, name in (("loaded", "latency"), ("paired_loaded", "paired speed-up"),
                                   ("deploy_paired_loaded", "same-runtime speed-up")) if r.get(key)]
    what += [f"{k} latency" for k, v in sorted((r.get("deploy") or {}).items())
             if isinstance(v, dict) and v.get("loaded") and k != "eager"]
    if not what:
        return None
    load = f" (load {r['load_avg']:.2f})" if isinstance(r.get("load_avg"), (int, float)) else ""
    others = (f", other processes using {r['others_cpu']:.2f} cores" if isinstance(r.get("others_cpu"), (int, float))
              and r["others_cpu"] > conditions.OTHERS_SLACK else "")
    return (f"timed under load{load}{others}: {', '.join(what)} taken while other processes held cores it needed "
            "(the load average above the CPU count, or their CPU use during the timing)")


def times_faster(x: float) -> str:
    """A speed-up in the words a reader takes in at a glance: 1.3 -> "1.30x faster", 0.8 -> "1.25x slower"."""
    return f"{x:.2f}x faster" if x >= 1 else f"{1 / x:.2f}x slower"


def speed_tile(r: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """What Compare's latency tile says for record ``r`` (``row``: its line of ``table``): ``label``,
    ``delta`` (the speed-up, or None) and ``how`` (where that speed-up comes from).

    The tile's value is the run's own median latency, timed alone in its job. Set beside the base's,
    timed by another job minutes apart, it can point the other way from the paired speed-up (one
    interleaved pair, in the same runtime), so the delta is the paired figure wherever one exists: along
    the chain to the base, else the record's own ``paired_speedup`` against its start; the ratio of two
    jobs' latencies only where neither was timed, and then it says so."""
    if row.get("base_id") == r.get("run_id"):
        return {"label": "Latency (its job)", "delta": None, "how": "the base: the runs below are measured "
                "against it"}
    if row.get("x_faster_paired") and _num(row.get("x_faster")):
        return {"label": "Latency (its job)", "delta": f"{times_faster(row['x_faster'])}, paired",
                "how": "speed-up over the base timed interleaved with the model each step started from, in the "
                       "same runtime (multiplied along the chain)"}
    own = step_speedup(r)
    if _num(own) and own > 0:
        return {"label": "Latency (its job)", "delta": f"{times_faster(own)} than its start, paired",
                "how": "speed-up over the model this run started from, timed interleaved with it in this run's "
                       "job; no paired figure reaches the base along its chain"}
    if _num(row.get("x_faster")) and row["x_faster"] > 0:
        return {"label": "Latency (its job)", "delta": f"{times_faster(row['x_faster'])}, separate jobs",
                "how": "no paired timing: the base's latency ÷ this run's, each timed by its own job (minutes "
                       "apart, so machine load can sway it)"}
    return {"label": "Latency (its job)", "delta": None, "how": "no speed-up against the base: it was not timed"}


def runtime(r: dict[str, Any]) -> str:
    """What ran the model when it was timed: its latencies compare only within one runtime."""
    if r.get("runtime"):
        return "ONNX Runtime INT8" if r.get("precision") == "int8" else str(r["runtime"])
    return "PyTorch eager" + (f" {r['precision']}" if r.get("precision") else "")


def pareto_mask(df: pd.DataFrame, cost: str, quality: str = "accuracy", include_chance: bool = False) -> pd.Series:
    """True for rows no other row on the same test set beats: lower-or-equal ``cost`` with strictly
    higher ``quality`` (or vice versa). Accuracies on different datasets do not compete. Runs at chance
    level neither enter nor push others off unless ``include_chance``."""
    mask = pd.Series(False, index=df.index)
    if not include_chance and "chance_level" in df:
        df = df[~_chance(df)]
    for _, group in df.groupby([c for c in TEST_SET if c in df], dropna=False, sort=False):
        best = -math.inf
        # Cheapest first; among equal cost, best quality first so ties do not both enter.
        for idx, row in group[[cost, quality]].dropna().sort_values([cost, quality], ascending=[True, False]).iterrows():
            if row[quality] > best:
                mask[idx] = True
                best = row[quality]
    return mask


def test_sets(df: pd.DataFrame) -> int:
    """How many different test sets the runs in ``df`` were scored on (a winner needs one)."""
    return len(df.groupby([c for c in TEST_SET if c in df], dropna=False)) if len(df) else 0


def on_newest_test_set(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The runs scored on the newest run's test set (where a winner is picked: accuracies on
    different test sets do not compete), and how many test sets ``df`` spans."""
    n = test_sets(df)
    if n <= 1:
        return df, n
    return df.merge(df.loc[[df["finished"].idxmax()], TEST_SET], on=TEST_SET), n


# What "the winner" means: the column ranked, and whether higher is better.
OBJECTIVES = {"accuracy": ("accuracy", False), "size": ("size_bytes", True), "macs": ("macs", True),
              "latency": ("latency_ms", True), "best_latency": ("best_latency_ms", True)}
# Deployment limits a winner must meet: name -> (column, bound is an upper limit).
LIMITS = {"max_size_bytes": ("size_bytes", True), "max_macs": ("macs", True), "max_latency_ms": ("latency_ms", True),
          "min_accuracy": ("accuracy", False), "max_drop": ("delta_accuracy", False)}


def _chance(df: pd.DataFrame) -> pd.Series:
    """True for the rows flagged at chance level."""
    return df["chance_level"].fillna(False).astype(bool)


def winners(df: pd.DataFrame, objective: str = "accuracy", include_chance: bool = False,
            **limits: float | None) -> pd.DataFrame:
    """The runs meeting every given limit, best first by ``objective`` (ties: more accurate, then
    smaller). ``max_drop`` is the accuracy a run may lose against its base (0.01 = 1 point). A run
    lacking a limited measurement is left out: nothing proves it meets the limit; so is a run at
    chance level, unless ``include_chance``."""
    unknown = set(limits) - set(LIMITS)
    if unknown or objective not in OBJECTIVES:
        raise ValueError(f"unknown objective or limit: {sorted(unknown) or objective}; "
                         f"objectives {sorted(OBJECTIVES)}, limits {sorted(LIMITS)}")
    keep = pd.Series(True, index=df.index)
    if not include_chance and "chance_level" in df:
        keep &= ~_chance(df)
    for name, bound in limits.items():
        if bound is None:
            continue
        col, upper = LIMITS[name]
        keep &= df[col] <= bound if upper else df[col] >= (-bound if name == "max_drop" else bound)
    col, ascending = OBJECTIVES[objective]
    order = {col: ascending, "accuracy": False, "size_bytes": True}   # the objective, then the tie-breaks
    return df[keep].dropna(subset=[col]).sort_values(list(order), ascending=list(order.values()),
                                                     na_position="last")


def pareto_front(df: pd.DataFrame, cost: str, quality: str = "accuracy",
                 include_chance: bool = False) -> pd.DataFrame:
    """The Pareto-optimal rows, sorted by cost (the line the plot draws)."""
    return df[pareto_mask(df, cost, quality, include_chance)].sort_values(cost)


# -- live jobs -------------------------------------------------------------------------------------
def job_progress(row: dict[str, Any]) -> dict[str, Any]:
    """Progress of a job from its state and latest event: fraction (0-1 or None), phase in words (see
    ``engine.phases``), epoch text, the current phase's ETA and speed."""
    ev = row.get("last_event") or {}
    state = row.get("state")
    # a queued job waiting for a run it needs says so (its last event only says "queued")
    waiting = row.get("waiting") or ("waiting for " + row["waiting_for"] if row.get("waiting_for") else "")
    return {"progress": phases.fraction(state, ev), "phase": phases.label(state, ev, waiting),
            "epoch": f"{ev['epoch']}/{ev['epochs']}" if ev.get("epoch") and ev.get("epochs") else "",
            "eta_s": ev.get("eta_s") if state == "running" else None,
            "images_per_s": ev.get("images_per_s") if state == "running" else None}


def curves(events: list[dict[str, Any]]) -> pd.DataFrame:
    """Training curves from progress events: one row per event with a loss or accuracy, x = fractional epoch.
    Only the latest attempt's: a retried job's events follow its old ones, which would draw the line
    back to epoch 0."""
    rows = []
    for ev in events:
        if ev.get("phase") == "queued" and ev.get("attempt"):
            rows.clear()
        if ev.get("epoch") is None or ev.get("loss") is None:
            continue
        phase = str(ev.get("phase", ""))
        val = phase.endswith(":val")
        x = ev["epoch"] if val or not ev.get("steps") else ev["epoch"] - 1 + ev.get("step", 0) / ev["steps"]
        rows.append({"epoch": x, "stage": phase.removesuffix(":val"), "split": "val" if val else "train",
                     "loss": ev["loss"], "accuracy": ev.get("val_acc") if val else ev.get("acc")})
    return pd.DataFrame(rows, columns=["epoch", "stage", "split", "loss", "accuracy"])


def sensitivity_curves(rec: dict[str, Any]) -> pd.DataFrame:
    """record["sensitivity"] as long rows (layer, amount, accuracy); accepts {layer: [{amount, accuracy}|[x, y]]}
    or a list of {layer, amount|ratio, accuracy} or {"curves": ...}."""
    sens = rec.get("sensitivity")
    if isinstance(sens, dict) and "curves" in sens:
        sens = sens["curves"]
    rows: list[dict[str, Any]] = []

    def point(layer: str, p: Any) -> None:
        if isinstance(p, dict):
            x = next((p[k] for k in ("amount", "ratio", "sparsity", "x") if k in p), None)
            y = next((p[k] for k in ("accuracy", "acc", "val_acc", "y") if k in p), None)
        elif isinstance(p, (list, tuple)) and len(p) == 2:
            x, y = p
        else:
            return
        if _num(x) and _num(y):
            rows.append({"layer": str(layer), "amount": float(x), "accuracy": float(y)})

    if isinstance(sens, dict):
        for layer, pts in sens.items():
            if isinstance(pts, dict):
                pts = [{"amount": float(k), "accuracy": v} for k, v in pts.items() if _is_float(k)]
            for p in pts if isinstance(pts, list) else []:
                point(layer, p)
    elif isinstance(sens, list):
        for p in sens:
            if isinstance(p, dict):
                point(p.get("layer", p.get("name", "model")), p)
    return pd.DataFrame(rows, columns=["layer", "amount", "accuracy"])


def _is_float(s: Any) -> bool:
    try:
        float(s)
        return True
    except (TypeError, ValueError):
        return False


def suggestions(rec: dict[str, Any]) -> pd.DataFrame:
    """A sensitivity record's suggested per-layer ratios with what they would remove, network order."""
    layers = rec.get("sensitivity_layers") or {}
    rows = []
    for name, ratio in (rec.get("suggested_ratios") or {}).items():
        n = (layers.get(name) or {}).get("channels")
        rows.append({"layer": name, "channels": n, "macs": (layers.get(name) or {}).get("macs"),
                     "suggested ratio": ratio, "channels removed": int(ratio * n) if _num(n) and _num(ratio) else None})
    return pd.DataFrame(rows, columns=["layer", "channels", "macs", "suggested ratio", "channels removed"])


def layer_widths(rec: dict[str, Any]) -> pd.DataFrame:
    """A pruning record's output channels per layer before and after, with the share kept."""
    rows = [{"layer": n, "before": w[0], "after": w[1], "kept": w[1] / w[0] if w[0] else None}
            for n, w in (rec.get("layer_widths") or {}).items()
            if isinstance(w, (list, tuple)) and len(w) == 2 and _num(w[0]) and _num(w[1])]
    return pd.DataFrame(rows, columns=["layer", "before", "after", "kept"])


PHASE_LABELS = {"data": "data", "train": "training", "method": "compressing", "evaluate": "test set",
                "export": "export", "measure": "timing"}


def phase_summary(phases: dict) -> str:
    """Where a finished job's wall time went (its record's phase_seconds), largest share first."""
    total = sum(v for v in phases.values() if isinstance(v, (int, float))) or 1.0
    parts = sorted(((PHASE_LABELS.get(k, k), v) for k, v in phases.items() if isinstance(v, (int, float))),
                   key=lambda kv: -kv[1])
    return "Where the time went: " + " · ".join(f"{name} {v:.1f} s ({100 * v / total:.0f} %)" for name, v in parts)
