"""Product-level: the Quick tour (CPU) preset through the real queue and worker, timed end to end, with
every row's accuracy judged: the base converged, no row at chance, the distilled student against the
same student trained plainly (paired over the same test images)."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from engine import data as data_mod
from engine import estimate, jobs, presets, results, runner, stats, training
from engine.spec import DataSpec
from engine.store import FINAL_STATES, Store

TARGET_S = 600
MIN_BASE = 0.85
# Published figures beside each row (docs: /work/shared/literature-anchors.md, with sources). All are
# CIFAR-10 (or ImageNet) results from long schedules: they set the direction and size of a Δ at a
# given compression, not a top-1 that a Fashion-MNIST row could be held to.
ANCHORS = {
    "baseline": "CIFAR-10 ResNet-20: 92.60 % (chenyaofo, 200 epochs)",
    # each anchor at the row's own kind of cut and, where the preset sizes it (QUICK_OVERRIDES), its MAC reduction
    "prune_structured": "CIFAR-10 ResNet-56, DepGraph without sparse learning: 93.53 → 93.46 % (−0.07 pt) at "
                        "2.11x fewer MACs",
    "prune_unstructured": "CIFAR-10 ResNet-18: within 0.1 pt of dense at 70-85 % sparsity (arXiv 2606.12278)",
    "soft_filter_pruning": "CIFAR-10 ResNet-56, SFP 30 % from a trained net + fine-tune: 93.59 → 93.35 % "
                           "(−0.24 pt) at 2.11x fewer FLOPs",
    "lowrank_svd": "CIFAR-10 ResNet-20, TRP channel: 91.74 → 90.50 % (−1.24 pt) at 2.17x fewer FLOPs; at ~2.9x only "
                   "the spatial form is published: −1.12 pt at 2.84x",
    "prune_blocks": "CIFAR-10 ResNet-56, layer pruning (SR-init, arXiv 2303.07677 abstract): −0.56 pt at 63.98 % fewer "
                    "parameters",
    "quantize_int8": "ImageNet ResNet-18 PTQ: −0.26 pt, 3.97x smaller (torchvision); no CIFAR ResNet-20 figure",
    "distill": "CIFAR-10 ResNet-18 student: KD +0.61 pt over plain (peterliht)",
    "compact": "CIFAR-10 MobileNetV2 x1.0 → x0.5 trained plainly (full schedule): −0.91 pt at 3.15x fewer MACs "
               "(chenyaofo)",
}


def run(plan: list[dict[str, Any]] | None = None, timeout_s: float = 1800) -> dict[str, Any]:
    """Launch ``plan`` (the Quick tour) in a workspace of its own through the queue; wait for every job."""
    home = Path(tempfile.mkdtemp(prefix="slimbench-tour-"))
    os.environ["SLIMBENCH_HOME"] = str(home)
    store = Store(home)
    plan, problems = presets.check(plan or presets.quick_tour())
    t0 = time.perf_counter()
    ids = presets.launch(plan, lambda s: jobs.submit(s, store))
    while time.perf_counter() - t0 < timeout_s:
        if all(store.get(i)["state"] in FINAL_STATES for i in ids):
            break
        jobs.ensure_worker(store)
        time.sleep(2)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "problems": problems, "store": store, "rows": [store.get(i) for i in ids],
            "load": os.getloadavg(), "concurrency": jobs.default_concurrency(),
            "parents": [estimate.plan_parent(s) for s in plan]}


def job_seconds(rec: dict[str, Any]) -> float | None:
    """A job's wall seconds from its record's per-phase times (None where it recorded none)."""
    phases = rec.get("phase_seconds") or {}
    vals = [v for v in phases.values() if isinstance(v, (int, float))]
    return sum(vals) if vals else None


def top_phases(rec: dict[str, Any], n: int = 2) -> str:
    """The ``n`` phases that cost the job most: "train 120 · measure 31"."""
    phases = [(k, v) for k, v in (rec.get("phase_seconds") or {}).items() if isinstance(v, (int, float))]
    return " · ".join(f"{results.PHASE_LABELS.get(k, k)} {v:.0f}" for k, v in sorted(phases, key=lambda kv: -kv[1])[:n])


def critical_path(seconds: list[float | None], parents: list[int | None]) -> tuple[float, list[int]]:
    """The longest chain of jobs (each after the job it starts from): its seconds and its jobs, first to last.
    No number of concurrent jobs makes the tour shorter than this."""
    chain: list[tuple[float, list[int]]] = []
    for i, s in enumerate(seconds):
        p = parents[i] if i < len(parents) else None
        before = chain[p] if p is not None and p < i else (0.0, [])
        chain.append((before[0] + (s or 0.0), [*before[1], i]))
    return max(chain, key=lambda c: c[0], default=(0.0, []))


def at_chance(rec: dict[str, Any]) -> bool:
    """The accuracy's 95 % interval reaches 1 / classes: no better than guessing, as far as the test set can tell."""
    ci = rec.get("accuracy_ci95") or [rec["accuracy"]] * 2
    return ci[0] <= 1 / rec["num_classes"]


def kd_vs_plain(store: Store, distilled: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    """Distilled minus plain student accuracy, paired over the same test images: both models predict the
    test split again here (each job scored itself against its teacher, not against the other student)."""
    data = data_mod.load(DataSpec(**distilled["spec"]["data"]))
    right = {}
    for name, row in (("kd", distilled), ("plain", plain)):
        model, _ = runner.load_run_model(store, row["id"])
        logits, ys = training.predict(model, data.loader("test", torch.device("cpu")), torch.device("cpu"))
        right[name] = logits.argmax(1) == ys
    to_right = int((right["kd"] & ~right["plain"]).sum())
    to_wrong = int((~right["kd"] & right["plain"]).sum())
    n = len(right["kd"])
    paired = stats.paired_difference(to_right, to_wrong, n)
    return {"delta": (int(right["kd"].sum()) - int(right["plain"].sum())) / n, "ci95": paired["ci95"],
            "p": paired["p"], "n": n}


def judge(res: dict[str, Any], kd: Callable[[Store, dict, dict], dict] = kd_vs_plain) -> dict[str, Any]:
    """Per-row verdicts from a finished tour: accuracy, Δ vs base with its CI, converged, at chance, anchor."""
    rows = res["rows"]
    base = next(r for r in rows if r["method"] == "baseline")
    out = []
    for r in rows:
        rec = r.get("record") or {}
        row: dict[str, Any] = {"method": r["method"], "state": r["state"], "anchor": ANCHORS.get(r["method"], "–"),
                               "seconds": job_seconds(rec), "phases": top_phases(rec)}
        if r["state"] == "done" and rec.get("accuracy") is not None:
            ci = rec.get("delta_accuracy_ci95")
            # the MAC cut beside each Δ: a row that compressed 1.07x and one that compressed 2.9x are
            # different answers (the low-rank row moved from one to the other when TRP became the default)
            macs = rec.get("macs")
            row.update(accuracy=rec["accuracy"], chance=at_chance(rec),
                       delta=None if r is base else rec["accuracy"] - base["record"]["accuracy"],
                       delta_ci=ci if r is not base else None,
                       macs_x=base["record"]["macs"] / macs if macs and base["record"].get("macs") else None)
            if r is base:
                row["learning"] = results.still_learning(rec)
        out.append(row)
    by = {r["method"]: r for r in rows if r["state"] == "done"}
    kd_res = kd(res["store"], by["distill"], by["compact"]) if {"distill", "compact"} <= set(by) else None
    parents = res.get("parents") or [None if r is base else rows.index(base) for r in rows]
    path_s, path = critical_path([r["seconds"] for r in out], parents)
    return {"rows": out, "base": out[rows.index(base)], "kd": kd_res, "wall_s": res["wall_s"],
            "problems": res["problems"], "load": res.get("load"), "concurrency": res.get("concurrency"),
            "critical_s": path_s, "critical": [out[i]["method"] for i in path],
            "jobs_s": sum(r["seconds"] or 0.0 for r in out)}


def render(j: dict[str, Any], plan: list[dict[str, Any]]) -> str:
    """The section's Markdown from ``judge``'s verdicts and the plan that ran."""
    b, kd = j["base"], j["kd"]
    failed = [r for r in j["rows"] if r["state"] != "done"]
    verdict = ("met" if j["wall_s"] < TARGET_S and not failed else
               f"missed by {j['wall_s'] - TARGET_S:.0f} s" if j["wall_s"] >= TARGET_S else "jobs failed")
    base_spec, data = plan[0], plan[0]["data"]
    load = f"; 1/5/15-min load average {', '.join(f'{x:.1f}' for x in j['load'])}" if j.get("load") else ""
    lines = ["### Quick tour (CPU)", "",
             f"- {len(j['rows'])} jobs (a baseline + every registered method at a small setting), submitted through "
             f"`engine.jobs` and run by the real worker: **{j['wall_s']:.0f} s** (target < {TARGET_S} s — {verdict}"
             f"{load})",
             f"- Data: {data['name']}, {data.get('limit') or 'all'} training images"
             f"{', at %d px' % data['image_size'] if data.get('image_size') else ''}, test set "
             f"{data.get('test_limit') or 'full'}; base {base_spec['model']['arch']}, {base_spec['train']['epochs']} "
             "epochs; the settings are `engine.presets.quick_tour()`'s",
             f"- Done: {len(j['rows']) - len(failed)}/{len(j['rows'])}"]
    lines += [f"- Not done: {r['method']} ({r['state']})" for r in failed]
    if j.get("critical"):
        at_once = j.get("concurrency")
        lines.append(f"- Where the time goes (each job's wall seconds: its record's per-phase times, without the "
                     f"worker's process start): jobs **{j['jobs_s']:.0f} s** in all; critical path "
                     f"**{' → '.join(j['critical'])} {j['critical_s']:.0f} s** (no number of jobs at a time beats it)"
                     + (f"; {at_once} job{'s' if at_once != 1 else ''} at a time here" if at_once else ""))
    lines += [f"- Left out of the plan: {p}" for p in j["problems"]]
    if "accuracy" in b:
        ok = b["accuracy"] >= MIN_BASE
        lines.append(f"- Base: top-1 **{b['accuracy']:.4f}** (target ≥ {MIN_BASE} — {'met' if ok else 'missed'}); "
                     f"converged: **{'no, ' + b['learning'] if b['learning'] else 'yes'}** (last epoch gained < 1 pt "
                     "of validation accuracy, the dashboard's under-trained test)")
    chance = [r["method"] for r in j["rows"] if r.get("chance")]
    lines.append(f"- Rows at chance (accuracy's 95 % interval reaches 1/classes): **{', '.join(chance) or 'none'}**")
    if kd:
        lo, hi = kd["ci95"]
        holds = hi >= 0  # "at least as good within the paired CI": the interval does not lie wholly below 0
        lines.append(f"- Distilled vs the same student trained plainly, same epochs, paired over {kd['n']:,} test images: "
                     f"**{100 * kd['delta']:+.2f} pt** (95 % CI {100 * lo:+.2f} to {100 * hi:+.2f}, McNemar p = "
                     f"{kd['p']:.3g}; KD ≥ plain within the CI — {'met' if holds else 'missed'})")
    lines += ["", "Published anchors are **CIFAR-10** (or ImageNet) figures from long schedules, set beside the row "
              "for the direction and size of its Δ, not its top-1 (Fashion-MNIST is easier).", "",
              "| method | job s | largest phases (s) | top-1 | Δ vs base (pt) | Δ 95% CI (pt) | x fewer MACs | converged | "
              "at chance | published anchor |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in j["rows"]:
        secs = f"{r['seconds']:.0f}" if r.get("seconds") is not None else "–"
        head = f"| {r['method']} | {secs} | {r.get('phases') or '–'} |"
        if "accuracy" not in r:
            lines.append(f"{head} {r['state']} | – | – | – | – | – | {r['anchor']} |")
            continue
        d = "–" if r["delta"] is None else f"{100 * r['delta']:+.2f}"
        ci = f"{100 * r['delta_ci'][0]:+.1f} to {100 * r['delta_ci'][1]:+.1f}" if r.get("delta_ci") else "–"
        conv = ("yes" if not r["learning"] else "no") if "learning" in r else "–"
        macs_x = f"{r['macs_x']:.2f}" if r.get("macs_x") else "–"
        lines.append(f"{head} {r['accuracy']:.4f} | {d} | {ci} | {macs_x} | {conv} | "
                     f"{'**yes**' if r['chance'] else 'no'} | {r['anchor']} |")
    return "\n".join(lines)


def section() -> str:
    plan = presets.quick_tour()
    return render(judge(run(plan)), plan)
