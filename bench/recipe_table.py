"""The machinery shared by the recipe tables (``bench.recipes_cpu`` on the CPU base, ``bench.literature`` on the
literature's CIFAR-10 nets): recipes as data, running each row then its control with resume and an optional
deadline, judging a row against its target and its control, the published point beside it, and the table rows.

Each command keeps only what differs: its recipes, its base, its prose and where it writes.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from engine import literature, runner
from engine.accuracy_text import target_mark
from engine.methods import control
from engine.store import Store
from engine.validation import check_spec

# Accuracy only: no speed is claimed, so the latency probes are the smallest the measurement allows.
MEASURE = {"onnx": False, "latency_runs": 2, "warmup_runs": 1, "paired_rounds": 0}


@dataclass(frozen=True)
class Target:
    """The issue's target for a row: ``kind`` names what is compared, ``bound`` in points."""
    text: str
    kind: str          # "delta" (Δ vs base ≥ bound), "abs_delta" (|Δ| ≤ bound), "vs_plain" (KD − plain ≥ bound)
    bound: float
    min_macs_x: float = 1.0
    min_size_x: float = 1.0
    min_base_acc: float = 0.0   # the base (a KD row's teacher) must reach this top-1 (fraction) for "met"
    min_test_images: int = 0    # scored on at least this many test images (the record's test_images) for "met"


@dataclass(frozen=True)
class Recipe:
    key: str
    label: str
    method: str
    params: dict
    target: Target
    literature: tuple[str, str] | None = None   # (method, net) in literature.csv; nearest MAC reduction kept
    anchor: str = ""                             # a cited figure where literature.csv has no row
    # literature.csv methods whose points on the run's own net are drawn beside the target's published point
    # (the targets are set on other nets: ResNet-56 and ResNet-18 where the CPU base is a ResNet-20)
    same_net: tuple[str, ...] = ()
    parent: str | None = None                    # key of the recipe this one starts from (default: the base)
    meta: dict = field(default_factory=dict)
    # whether a control follows the row: None = whenever the method is controllable (control.controllable)
    control: bool | None = None
    # for a deadline (``Budget``): the row's training as (epochs, share of the base's MACs) phases, and how many
    # jobs' worth of fixed cost (load, evaluation, measurement) it carries (INT8 also calibrates and scores in ORT)
    cost: tuple[tuple[float, float], ...] = ()
    overheads: float = 1.0


def spec(name: str, data: dict, model: dict, method: str, params: dict, epochs: int = 1, device: str = "cpu",
         measure: dict | None = None) -> dict:
    """A job on ``device``; ``epochs`` is train.epochs (only the base trains by it: methods carry their own)."""
    return check_spec({"name": name, "data": data, "model": model, "method": {"name": method, "params": params},
                       "train": {"epochs": epochs, "device": device}, "measure": dict(measure or MEASURE)})


def has_control(r: Recipe) -> bool:
    """Whether ``r``'s row is followed by its control."""
    able = control.controllable({"name": r.method, "params": r.params})
    return able if r.control is None else (r.control and able)


# -- resuming --------------------------------------------------------------------------------------
LABELS = ("name", "experiment", "group")   # a job's labels: they do not change what it computes


def same_job(a: dict, b: dict) -> bool:
    """Two specs compute the same thing: equal in every field but their labels (compared through JSON,
    as the store keeps them)."""
    def canon(d: dict) -> str:
        return json.dumps({k: v for k, v in d.items() if k not in LABELS}, sort_keys=True)
    return canon(json.loads(json.dumps(a))) == canon(b)


def finished_run(store: Store, job) -> dict | None:
    """The latest finished run in ``store`` whose spec is ``job``'s (a checked spec), else None."""
    want = job.to_dict()
    return next((r for r in store.list(state="done") if r.get("record") and same_job(want, r["spec"])), None)


def reuse_note(row: dict) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(row["finished"])) if row.get("finished") else "an earlier run"
    return f"reused run {row['id']} from {when}"


def run_job(job, store: Store, resume: bool) -> tuple[dict, dict, str | None]:
    """(record, store row, reuse note): the finished run of the same spec when ``resume`` finds one,
    else a new run."""
    row = finished_run(store, job) if resume else None
    if row is not None:
        return row["record"], row, reuse_note(row)
    rec = runner.run_spec(job, store)
    return rec, store.get(rec["run_id"]), None


# -- deadline --------------------------------------------------------------------------------------
class Budget:
    """Seconds left of a command's wall-clock budget (``seconds`` None: no deadline). A job starts only if its
    estimate fits what is left; one that does not is left pending (the next, cheaper job may still fit)."""

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.perf_counter):
        self.seconds, self.clock, self.t0 = seconds, clock, clock()

    def left(self) -> float:
        return float("inf") if self.seconds is None else self.seconds - (self.clock() - self.t0)

    def fits(self, estimate_s: float) -> bool:
        return estimate_s <= self.left()


# -- running ---------------------------------------------------------------------------------------
def new_result(base: dict, base_row: dict, settings: dict, reused: dict[str, str] | None = None) -> dict[str, Any]:
    return {"base": base, "base_row": base_row, "rows": {}, "controls": {}, "failed": {}, "reused": reused or {},
            "skipped": {}, "pending": [], "settings": settings}


def run_rows(todo: list[Recipe], res: dict[str, Any], data: dict, store: Store, *, name: str, resume: bool = False,
             log: Callable[[str], None] = print, on_row: Callable[[dict], None] | None = None, device: str = "cpu",
             measure: dict | None = None, budget: Budget | None = None,
             estimate: Callable[[Recipe, dict | None], float] | None = None) -> dict[str, Any]:
    """Each recipe of ``todo`` in order from ``res["base"]`` (or its ``parent`` row), each row followed by its
    control (``has_control``), so a run stopped early leaves rows with their controls. ``on_row(res)`` after every
    job. ``resume``: a job whose exact spec already finished in ``store`` is reused (noted in its row).
    ``budget`` + ``estimate(recipe, row)`` (``row`` None: the recipe; else its control, for that row): a job whose
    estimate does not fit what is left is not started and stays in ``res["pending"]``, its reason in
    ``res["skipped"]``; a job whose start did not run is pending too. A failing method is recorded, not raised."""
    base, reused = res["base"], res["reused"]
    res["pending"] = [k for r in todo for k in ([r.key] + ([f"control of {r.key}"] if has_control(r) else []))]

    def attempt(key: str, job_of: Callable[[], Any], est: float | None) -> tuple[dict, dict] | None:
        t = time.perf_counter()
        try:
            job = job_of()
            # a job --resume will reuse costs nothing: only one that would run must fit
            if budget is not None and est is not None and not budget.fits(est) and not (
                    resume and finished_run(store, job)):
                res["skipped"][key] = f"estimated {est:.0f} s, {max(0.0, budget.left()):.0f} s left"
                log(f"{key}: not started ({res['skipped'][key]}): pending")
                return None
            res["pending"].remove(key)
            rec, row, note = run_job(job, store, resume)
        except Exception as e:  # a failing method is a finding: the table says so instead of vanishing
            res["failed"][key] = str(e)
            if key in res["pending"]:
                res["pending"].remove(key)
            log(f"{key}: FAILED {e}")
            return None
        if note:
            reused[key] = note
        res.setdefault("job_s", {})[key] = round(time.perf_counter() - t, 1)
        if est is not None:
            res.setdefault("estimated_s", {})[key] = round(est, 1)
        res["_note"] = note or f"{time.perf_counter() - t:.0f} s" + (f", estimated {est:.0f} s" if est else "")
        return rec, row

    for r in todo:
        if r.parent and r.parent not in res["rows"]:
            res["skipped"][r.key] = f"its start ({r.parent}) has no finished row"
            log(f"{r.key}: not started ({res['skipped'][r.key]}): pending")
            continue
        start = res["rows"][r.parent]["id"] if r.parent else base["run_id"]
        got = attempt(r.key, lambda: spec(f"{name}: {r.label}", data, {"from_run": start}, r.method, r.params,
                                          device=device, measure=measure),
                      estimate(r, None) if estimate else None)
        if got is None:
            if r.key in res["failed"] and f"control of {r.key}" in res["pending"]:
                res["pending"].remove(f"control of {r.key}")   # nothing to control
            if on_row:
                on_row(res)
            continue
        rec, row = got
        res["rows"][r.key] = row
        log(f"{r.key}: top-1 {rec['accuracy']:.4f}, {base['macs'] / rec['macs']:.2f}x fewer MACs ({res['_note']})")
        if on_row:
            on_row(res)
        if not has_control(r):
            continue
        got = attempt(f"control of {r.key}",
                      lambda: spec(f"{name}: control of {r.label}", data, {"from_run": base["run_id"]}, "control",
                                   {"of_run": row["id"]}, device=device, measure=measure),
                      estimate(r, row) if estimate else None)
        if got is not None:
            rec = got[0]
            res["controls"][r.key] = rec
            log(f"control of {r.key}: {rec['control_arch']} x{rec['control_width']:.3f}, top-1 {rec['accuracy']:.4f}, "
                f"compressed − control {rec['control_delta_pt']:+.2f} pt ({res['_note']})")
        if on_row:
            on_row(res)
    res.pop("_note", None)
    return res


# -- judging --------------------------------------------------------------------------------------
def control_verdict(ctrl: dict | None) -> str:
    """"beats control" only where the paired 95 % interval of compressed − control lies above 0."""
    if ctrl is None:
        return "–"
    lo, hi = ctrl["control_delta_ci95_pt"]
    if lo > 0:
        return "**beats control**"
    return "does not (control better)" if hi < 0 else "does not (tie within CI)"


def point_text(p: literature.Point) -> str:
    macs = f", {p.mac_reduction:g}x fewer MACs" if p.mac_reduction > 1 else ""
    return f"{p.method}, {p.net} {p.dataset}: {p.base_acc:.2f} → {p.result_acc:.2f} % ({p.delta_pt:+.2f} pt{macs}; {p.source})"


def nearest(pts: list[literature.Point], macs_x: float | None) -> literature.Point | None:
    return min(pts, key=lambda p: abs(p.mac_reduction - (macs_x or 1.0))) if pts else None


def same_net_points(r: Recipe, net: str | None, macs_x: float | None) -> list[literature.Point]:
    """Per method in ``r.same_net``: its CIFAR-10 point on ``net`` (the run's own) nearest our MAC reduction;
    none for the target's own (method, net) (that point is already drawn)."""
    if not net:
        return []
    found = (nearest([p for p in literature.matching(net, "cifar10") if p.method == m], macs_x) for m in r.same_net
             if (m, net) != r.literature)
    return [p for p in found if p is not None]


def published(r: Recipe, macs_x: float | None, net: str | None = None) -> str:
    """The literature.csv point for the recipe's (method, net) nearest our MAC reduction, with its cite; then,
    where the run's own ``net`` differs from the target's, the same method's points on ``net``."""
    target = None
    if r.literature is not None:
        target = nearest([p for p in literature.points() if (p.method, p.net) == r.literature], macs_x)
    text = point_text(target) if target else (r.anchor if r.literature is None and r.anchor else "–")
    own = same_net_points(r, net, macs_x)
    if own:
        text += f"; on our net ({net}): " + "; ".join(point_text(p) for p in own)
    return text


def verdict_text(r: Recipe, ctrl: dict | None, macs_x: float | None) -> str:
    """The control verdict and, where our method has one, the published pruned − scratch figure beside it."""
    published_gap = literature.counterpart_text(r.method, macs_x, cite=False) if ctrl else None
    return control_verdict(ctrl) + (f"; {published_gap}" if published_gap else "")


def published_scratch_line() -> str:
    """The target's published counterpart: every verified structured pair (MACs cut) of Liu et al. 2019, pruned weights
    fine-tuned − the same net from scratch, and how many of them beat the same-epochs scratch net."""
    pairs = [q for q in literature.scratch_pairs() if q.fine_tuned.mac_reduction > 1]
    if not pairs:
        return ""
    beats = sum("Scratch-E" in q.scratch and q.gap_pt("Scratch-E") > 0 for q in pairs)
    each = "; ".join(f"{q.stem.split(': ', 1)[-1]} on {q.fine_tuned.dataset} "
                     f"{' / '.join(f'{q.gap_pt(k):+.2f}' for k in q.scratch)} pt ({' / '.join(q.scratch)})" for q in pairs)
    return (f"- Published counterpart (Liu et al. 2019, pruned weights fine-tuned − the same net trained from scratch): "
            f"{each}; {beats} of {len(pairs)} verified structured pairs beat even Scratch-E (the same epochs; point "
            f"estimates, no intervals) ({'; '.join(sorted({q.fine_tuned.source for q in pairs}))}).")


def judge(r: Recipe, rec: dict, base: dict, kd_vs_plain_pt: float | None) -> str:
    """Met, or missed and by how much, against the recipe's target."""
    t = r.target
    d = round(100 * (rec["accuracy"] - base["accuracy"]), 2)   # judged as printed: 2 decimals
    macs_x, size_x = base["macs"] / rec["macs"], base["size_bytes"] / rec["size_bytes"]
    short = []
    if macs_x < t.min_macs_x * 0.98:   # "~2.1x": the MAC search lands within its ±5 %
        short.append(f"{macs_x:.2f}x < {t.min_macs_x:g}x fewer MACs")
    if base["accuracy"] < t.min_base_acc:
        short.append(f"teacher {100 * base['accuracy']:.2f} % < {100 * t.min_base_acc:g} %")
    if rec.get("test_images", t.min_test_images) < t.min_test_images:
        short.append(f"scored on {rec['test_images']:,} test images, not {t.min_test_images:,}")
    if size_x < t.min_size_x:
        short.append(f"{size_x:.2f}x < {t.min_size_x:g}x smaller")
    if t.kind == "delta" and d < t.bound:
        short.append(f"Δ {target_mark(d, t.bound, unit=' pt')}")
    elif t.kind == "abs_delta" and abs(d) > t.bound:
        short.append(f"Δ outside ±{t.bound:g} pt by {abs(d) - t.bound:.2f} pt")
    elif t.kind == "vs_plain":
        if kd_vs_plain_pt is None:
            return "not judged (no plain student)"
        if kd_vs_plain_pt < t.bound:
            short.append(f"KD − plain {kd_vs_plain_pt:+.2f} pt, {target_mark(kd_vs_plain_pt, t.bound, unit=' pt')}")
    elif t.kind == "none":
        return "–"
    return "met" if not short else "missed: " + "; ".join(short)


def ci_text(ci: list[float] | None, scale: float = 100) -> str:
    return f"{scale * ci[0]:+.2f} to {scale * ci[1]:+.2f}" if ci else "–"


# -- rendering -------------------------------------------------------------------------------------
TABLE_HEAD = ["| row | top-1 | Δ vs base (pt) | Δ 95% CI (pt) | x fewer MACs | x smaller | control (arch, width, "
              "MACs ratio, epochs, top-1) | compressed − control (pt, 95% CI) | verdict | published point | "
              "target | met? |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]


def table_lines(recipes: list[Recipe], res: dict[str, Any], kd: dict | None, net: str | None,
                kd_note: str = "") -> list[str]:
    """The table's rows: one per recipe run, failed or (with a reason in ``res["skipped"]``) left pending; a
    recipe not reached yet has no row (the caller lists it). ``kd``: ``quick_tour.kd_vs_plain``'s result;
    ``kd_note``: appended to the KD row's control cell (e.g. whether the teacher met its bar)."""
    base, rows, reused = res["base"], res["rows"], res.get("reused", {})
    kd_pt = 100 * kd["delta"] if kd else None
    lines = list(TABLE_HEAD)
    for r in recipes:
        if r.key in res["failed"]:
            lines.append(f"| {r.label} | failed: {res['failed'][r.key]} | – | – | – | – | – | – | – | – | "
                         f"{r.target.text} | not run |")
            continue
        if r.key in res.get("skipped", {}):
            lines.append(f"| {r.label} | **pending**: not started ({res['skipped'][r.key]}) | – | – | – | – | – | – | "
                         f"– | {published(r, None, net)} | {r.target.text} | pending |")
            continue
        row = rows.get(r.key)
        if row is None:
            continue
        rec = row["record"]
        macs_x, size_x = base["macs"] / rec["macs"], base["size_bytes"] / rec["size_bytes"]
        ctrl = res["controls"].get(r.key)
        ckey = f"control of {r.key}"
        if ctrl:
            c_text = (f"{ctrl['control_arch']} x{ctrl['control_width']:.3f}, {ctrl['control_macs_ratio']:.3f}, "
                      f"{ctrl['control_epochs']} ep, {ctrl['accuracy']:.4f}")
            c_delta = f"{ctrl['control_delta_pt']:+.2f} ({ci_text(ctrl['control_delta_ci95_pt'], 1)})"
        elif ckey in res["failed"]:
            c_text, c_delta = f"failed: {res['failed'][ckey]}", "–"
        elif ckey in res.get("skipped", {}):
            c_text, c_delta = f"**pending**: not started ({res['skipped'][ckey]})", "–"
        elif r.key == "small5x" and "structured" in res["controls"]:
            c_text, c_delta = "its structured step's (row 1): INT8 keeps the architecture", "–"
        elif r.key == "kd" and kd:
            c_text, c_delta = "–", "–"
        else:
            c_text, c_delta = ("not controllable (MACs unchanged)" if r.method in ("prune_unstructured", "quantize_int8")
                               else "–"), "–"
        if ckey in reused:
            c_text += f"; {reused[ckey]}"
        if r.key == "kd" and kd:
            c_text = "; ".join(filter(None, [c_text if ctrl else "", f"vs plain student (same epochs): {kd_pt:+.2f} pt "
                                             f"({ci_text(kd['ci95'])})"])) + kd_note
        label = f"{r.label} ({reused[r.key]})" if r.key in reused else r.label
        lines.append(f"| {label} | {rec['accuracy']:.4f} | {100 * (rec['accuracy'] - base['accuracy']):+.2f} | "
                     f"{ci_text(rec.get('delta_accuracy_ci95'))} | {macs_x:.2f} | {size_x:.2f} | {c_text} | {c_delta} | "
                     f"{verdict_text(r, ctrl, macs_x)} | {published(r, macs_x, net)} | {r.target.text} | "
                     f"{judge(r, rec, base, kd_pt)} |")
    return lines


def structured_controls_line(res: dict[str, Any], keys: tuple[str, ...] = ("structured", "sfp")) -> list[str]:
    """"Every structured row beats its control", met or missed, and the published scratch counterpart."""
    struct_keys = [k for k in keys if k in res["controls"]]
    beats = [k for k in struct_keys if control_verdict(res["controls"][k]).startswith("**beats")]
    waiting = [k for k in keys if f"control of {k}" in res.get("pending", ())]
    verdict = "met" if struct_keys and beats == struct_keys else "missed"
    if waiting and verdict == "met" or not struct_keys and waiting:
        verdict = "not judged yet"   # a pending control could still miss it
    lines = [f"- Every structured row beats its control: **{verdict}** "
             f"({len(beats)} of {len(struct_keys)}: {', '.join(struct_keys) or 'none run'}"
             + (f"; control pending: {', '.join(waiting)})" if waiting else ")")]
    if struct_keys and (line := published_scratch_line()):
        lines.append(line)
    return lines
