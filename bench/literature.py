"""``python -m bench literature --part resnet56|resnet18|resnet20``: issue 19's GPU literature table, one net per
device call. Each part trains its base with the literature recipe (``presets.cifar10_literature``: full CIFAR-10,
batch 512, cuda) unless ``--base-run``/``--base-checkpoint`` names one, then the part's recipes, each controllable
row followed by its control (the same family scaled to its MACs, trained from scratch for the same total epochs),
beside the published row from ``engine/literature.csv`` and the issue's target, met or missed. Rows whose
estimate no longer fits ``--minutes`` are not started and are listed as pending.

A part cut short finishes in a later call: ``--workspace $OUT/ws`` in the first (ResNet-56 and ResNet-20 bundles are a
few MB), then ``--workspace ws --resume`` with it carried back reuses every finished job (the base included) and runs
only what is missing. (``--base-checkpoint`` starts from a bundle too, but the control method cannot count a
checkpoint's epochs, so its controls train short; the part says so.)

It writes the ``gpu/literature`` block of docs/BENCHMARKS.md after every row, one sub-part per net, keeping the
other nets' text from earlier runs; ``--device cpu --tiny`` rehearses a part in well under a minute on CPU into a
scratch file (``--out``) or the terminal (``--no-write``). The machinery is ``bench.recipe_table``'s, shared
with ``python -m bench recipes-cpu``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from engine import literature, presets, recovery_lr, settings
from engine.store import Store

from . import quick_tour, report
from .recipe_table import (Budget, Recipe, Target, new_result, run_job, run_rows, spec, structured_controls_line,
                           table_lines)

NETS = ("resnet56", "resnet18", "resnet20")
BLOCK = "literature"                 # the gpu/literature block; each net a sub-part gpu/literature/<net>
MINUTES = 8.5                        # one device call is <= 9 min: half a minute spare for process start and copy-back
# Seconds per base epoch until the base's own is measured (a --base-checkpoint): presets.cifar10_literature's
# docstring (H100/H200, batch 512: ResNet-18 ~2 s, ResNet-56 ~2 s as its 55 thin layers are launch-bound, ResNet-20
# ~1 s; the one measured figure: ResNet-18 12 epochs in 28 s at batch 256 on an H100).
S_PER_EPOCH_GUESS = {"resnet18": 2.0, "resnet56": 2.0, "resnet20": 1.0}
# A job's epoch costs its MAC share of a base epoch, but never less than half: at 32 px a thin net's step is bound by
# kernel launches, not FLOPs (the same docstring puts ResNet-20, 41 M MACs, at half of ResNet-18's 556 M epoch).
MIN_TIME_SHARE = 0.5
OVERHEAD_S = 20.0                    # a job's fixed cost until the base's own is measured (load, evaluate, save)
TEACHER_BAR = 0.94                   # the KD target wants a >= 94 % teacher
# Accuracy only: no speed is claimed here, so latency probes are the smallest the measurement allows and no runtime
# export is verified or timed (deploy: 26 of a tiny CPU ResNet-18 base job's 49 s went to it).
MEASURE = {"onnx": False, "deploy": False, "latency_runs": 2, "warmup_runs": 1, "paired_rounds": 0}

STRUCT_56 = 1 / 2.1   # DepGraph / ResRep / SFP on ResNet-56: ~2.1x fewer MACs
STRUCT_18 = 1 / 2.0   # the ResNet-18 target: >= 2x
SFP_RATIO_56 = 0.3    # SFP's ResNet-56 2.11x row prunes 30 % of every layer's filters (He et al. 2018, Table 1)
LOWRANK_KEPT = 0.35   # TRP's ResNet-20 2.84x: a rank floor at 0.35 of the MACs (~2.86x), as recipes-cpu

# Epochs per row at --epochs-scale 1, sized with S_PER_EPOCH_GUESS to fit MINUTES (510 s) per part. The papers run
# far longer (DepGraph fine-tunes 100 epochs after the cut, SFP and TRP train 160-200); these are what one device
# call affords after the base, and --epochs-scale / a later call with --base-checkpoint can buy more.
#
# resnet56: base 90 ep x 2 s = 180 s + 20 s = 200 s. structured: 10 fine-tune ep at ~0.48 MACs (floor 0.5) = 10 s
#   + 20 = 30 s; its control 90 + 10 = 100 ep x 2 s x 0.5 = 100 s + 20 = 120 s; SFP 10 soft ep at full MACs = 20 s
#   + 20 = 40 s; its control 100 ep = 120 s. Sum 510 s: exactly the budget, so if the guesses are short the last job,
#   SFP's control, is the one left pending (the planner skips it rather than overrun).
# resnet18: base 40 ep x 2 s = 80 s + 20 = 100 s. structured 10 ep x 0.5 = 10 + 20 = 30 s; control 50 ep x 0.5 = 50
#   + 20 = 70 s; gradual 90 % unstructured 20 ep at full MACs (Zhu & Gupta prune over the first 75 % of the steps,
#   then recover) = 40 + 20 = 60 s; INT8 and structured -> INT8 no training, two jobs' fixed cost each (calibrate,
#   score in ONNX Runtime on the CPU) = 40 s each; KD 30 student ep (ResNet-20: floor 0.5) + the teacher's forward
#   pass (a third of its training step) = 30 x 2 x (0.5 + 0.33) = 50 + 20 = 70 s; plain student 30 x 1 = 30 + 20 =
#   50 s. Sum 460 s.
# resnet20: base 100 ep x 1 s = 100 s + 20 = 120 s. TRP 60 ep of nuclear-norm training with truncations at full MACs
#   + 30 fine-tune ep at 0.35 (floor 0.5) = 60 + 15 + 20 = 95 s; control 100 + 90 = 190 ep x 1 s x 0.5 = 95 + 20 =
#   115 s. Sum 330 s (TRP got the spare time: it is the row furthest from its published point on the CPU base).
EPOCHS = {"resnet56": {"structured": 10, "sfp": 10},
          "resnet18": {"structured": 10, "unstructured": 20, "kd": 30, "plain": 30},
          "resnet20": {"lowrank_reg": 60, "lowrank_ft": 30}}
STRUCTURED = {"resnet56": ("structured", "sfp"), "resnet18": ("structured",), "resnet20": ()}
# Static INT8 PTQ in one format (U8S8 QDQ, per-channel weights, percentile calibration, stem and classifier FP32:
# the method's defaults otherwise), as torchvision's published PTQ is one recipe. ``format: auto`` would time every
# format and, where none agrees >= 97 % with FP32, keep layers FP32 one by one: 258 s for one row of a tiny CPU
# rehearsal, a cost no estimate can bound within one device call.
INT8 = {"format": "qdq"}
KD_STUDENT = {"student": "resnet20", "width": 1.0}   # the CIFAR ResNet-20 under a ResNet-18 teacher: ~13x fewer MACs


def scaled(n: int, scale: float) -> int:
    return max(1, round(n * scale))


def recipes(part: str, scale: float = 1.0, rewind_lr: float | None = None) -> list[Recipe]:
    """The part's rows in run order, at ``EPOCHS`` x ``scale`` (at least 1 each); every fine-tune after a cut at the
    base's training rate ``rewind_lr`` (learning-rate rewinding, the engine's default; named so that --resume never
    takes a run made at another rate for this row)."""
    e = {k: scaled(n, scale) for k, n in EPOCHS[part].items()}
    lr = {"finetune_lr": rewind_lr} if rewind_lr else {}
    rewind = f", fine-tune at the training LR {rewind_lr:g}" if rewind_lr else ""
    if part == "resnet56":
        return [
            Recipe("structured", f"structured L1, uniform, ~2.1x fewer MACs, {e['structured']} fine-tune epochs{rewind}",
                   "prune_structured", {"target_macs": STRUCT_56, "finetune_epochs": e["structured"], **lr},
                   Target("≥ 2.1x fewer MACs at Δ ≥ −0.3 pt (stretch Δ ≥ 0)", "delta", -0.3, min_macs_x=2.1),
                   ("DepGraph (plain group-norm)", "resnet56"), cost=((e["structured"], STRUCT_56),), control=True),
            # He et al.'s schedule (the method's default): every epoch soft-prunes, the hard cut ends it, no fine-tune
            Recipe("sfp", f"soft filter pruning {SFP_RATIO_56:.0%} of filters, {e['sfp']} soft epochs, hard cut at the "
                          f"end{rewind.replace('fine-tune at', 'trained at')}", "soft_filter_pruning",
                   {"ratio": SFP_RATIO_56, "epochs": e["sfp"], "finetune_epochs": 0, **lr},
                   Target("2.1x fewer MACs at Δ ≥ −0.5 pt", "delta", -0.5, min_macs_x=2.0),
                   ("SFP (pretrained + fine-tune)", "resnet56"), cost=((e["sfp"], 1.0),), control=True),
        ]
    if part == "resnet18":
        struct = {"target_macs": STRUCT_18, "finetune_epochs": e["structured"], **lr}
        student = {**KD_STUDENT, "epochs": e["kd"]}
        return [
            Recipe("structured", f"structured L1, uniform, ~2x fewer MACs, {e['structured']} fine-tune epochs{rewind}",
                   "prune_structured", struct, Target("≥ 2x fewer MACs at Δ ≥ −0.5 pt", "delta", -0.5, min_macs_x=2.0),
                   # literature.csv has no structured CIFAR-10 ResNet-18 row: the nearest published cut, on ResNet-56
                   ("DepGraph (plain group-norm)", "resnet56"), cost=((e["structured"], STRUCT_18),), control=True),
            # INT8 of the structured row's own model: no second prune (its Δ and size are against the base)
            Recipe("small5x", "structured ~2x (the row above) → INT8 static (ONNX Runtime, QDQ)", "quantize_int8", INT8,
                   Target("≥ 5x smaller at Δ ≥ −1 pt", "delta", -1.0, min_size_x=5.0), parent="structured",
                   overheads=2.0, control=False),
            Recipe("int8", "INT8 static (ONNX Runtime, QDQ)", "quantize_int8", INT8,
                   Target("Δ within ±0.3 pt on the full 10,000-image test set", "abs_delta", 0.3, min_test_images=10000),
                   ("INT8 PTQ (torchvision)", "resnet18"), overheads=2.0, control=False),
            Recipe("kd", f"KD (T=2) from the base → ResNet-20, {e['kd']} epochs", "distill",
                   {**student, "loss": "kd"},
                   Target(f"KD student ≥ plain student + 0.5 pt, teacher ≥ {TEACHER_BAR:.0%}", "vs_plain", 0.5,
                          min_base_acc=TEACHER_BAR),
                   ("KD (ResNeXt-29 teacher)", "resnet18"), cost=((e["kd"], MIN_TIME_SHARE), (e["kd"] / 3, 1.0)),
                   control=False),
            Recipe("plain", f"ResNet-20 trained plainly, {e['plain']} epochs (KD's plain student)", "compact",
                   {**KD_STUDENT, "epochs": e["plain"]}, Target("reference for KD", "none", 0.0),
                   cost=((e["plain"], MIN_TIME_SHARE),), control=False),
            Recipe("unstructured", f"unstructured 90 %, gradual (Zhu & Gupta) over {e['unstructured']} epochs{rewind}",
                   "prune_unstructured",
                   {"amount": 0.9, "schedule": "gradual", "finetune_epochs": e["unstructured"], **lr},
                   Target("90 % sparsity at Δ ≥ −0.5 pt", "delta", -0.5),
                   anchor=quick_tour.ANCHORS["prune_unstructured"], cost=((e["unstructured"], 1.0),), control=False),
        ]
    if part == "resnet20":
        # TRP (Xu et al. 2020): nuclear norm 3e-4, truncation every 20 steps (the paper's m; at batch 512 on 45,000
        # images ~4 a epoch, ~260 over the phase), energy 0.9 with the rank floor at LOWRANK_KEPT of the MACs
        return [Recipe("lowrank", f"low-rank TRP (channel), energy 0.9, held at {LOWRANK_KEPT:g} of the MACs, "
                                  f"{e['lowrank_reg']} + {e['lowrank_ft']} epochs{rewind}", "lowrank_svd",
                       {"route": "trp", "decomposition": "channel", "target_macs": LOWRANK_KEPT,
                        "reg_epochs": e["lowrank_reg"], "finetune_epochs": e["lowrank_ft"], **lr},
                       Target("≥ 2.8x fewer MACs at Δ ≥ −1.1 pt", "delta", -1.1, min_macs_x=2.8),
                       ("TRP (spatial)", "resnet20"), same_net=("TRP (channel)",),
                       cost=((e["lowrank_reg"], 1.0), (e["lowrank_ft"], LOWRANK_KEPT)), control=True)]
    raise ValueError(f"unknown part {part!r}: choose from {', '.join(NETS)}")


# -- the deadline ----------------------------------------------------------------------------------
def pace(base_row: dict, base_epochs: int | None, wall_s: float | None, arch: str) -> dict[str, Any]:
    """Seconds per base epoch and a job's fixed cost, measured on the base's own job where it trained here (train
    time ÷ epochs; the job's wall less its training), else ``S_PER_EPOCH_GUESS`` / ``OVERHEAD_S``."""
    rec = base_row["record"]
    train_s = rec.get("train_seconds")
    if base_epochs and train_s:
        s_epoch, how = train_s / base_epochs, "measured on the base"
    else:
        s_epoch, how = S_PER_EPOCH_GUESS[arch], "guessed (the base did not train here)"
    if wall_s is None and base_row.get("started") and base_row.get("finished"):
        wall_s = base_row["finished"] - base_row["started"]
    overhead = max(1.0, wall_s - (train_s or 0)) if wall_s and base_epochs else OVERHEAD_S
    return {"s_epoch": s_epoch, "overhead_s": overhead, "how": how, "base_epochs": base_epochs or 0}


def estimator(p: dict[str, Any], base: dict) -> Callable[[Recipe, dict | None], float]:
    """A job's estimated seconds: its epochs x the base's seconds per epoch x the MAC share each trains at (never
    under MIN_TIME_SHARE), plus its fixed costs. A control trains from scratch for the base's epochs plus the row's
    at the row's measured MAC share, or at the time share a cut net of this part was measured to train at, where
    that is more: a row that trained only at its cut MACs (structured: one phase below the base's MACs) records it
    in ``p["observed_share"]`` (its training seconds ÷ its epochs x the base's seconds per epoch). A narrower net of
    the same depth is launch-bound on a GPU much as the base is, so MACs alone would promise a control too soon."""
    def estimate(r: Recipe, row: dict | None) -> float:
        if row is None:
            work = sum(ep * max(MIN_TIME_SHARE, share) for ep, share in r.cost)
            return work * p["s_epoch"] + r.overheads * p["overhead_s"]
        rec = row["record"]
        if len(r.cost) == 1 and r.cost[0][1] < 1 and rec.get("train_seconds") and p["s_epoch"]:
            p["observed_share"] = round(rec["train_seconds"] / (r.cost[0][0] * p["s_epoch"]), 3)
        share = max(MIN_TIME_SHARE, rec["macs"] / base["macs"], p.get("observed_share", 0.0))
        epochs = p["base_epochs"] + sum(ep for ep, _ in r.cost)
        return epochs * share * p["s_epoch"] + p["overhead_s"]
    return estimate


# -- running ---------------------------------------------------------------------------------------
def data_spec(cifar: str, device: str, limit: int | None = None, test_limit: int | None = None,
              batch_size: int | None = None, image_size: int | None = None) -> dict:
    """Full CIFAR-10 at the literature preset's batch 512 on CUDA (the engine's CPU default, 64, on CPU)."""
    data = {"name": "cifar10", "path": cifar}
    if batch_size or device == "cuda":
        data["batch_size"] = batch_size or 512
    data.update({k: v for k, v in (("limit", limit), ("test_limit", test_limit), ("image_size", image_size)) if v})
    return data


def run(part: str, data: dict, store: Store, *, device: str = "cuda", base_epochs: int | None = None,
        scale: float = 1.0, base_id: str | None = None, base_checkpoint: str | None = None,
        only: set[str] | None = None, minutes: float | None = MINUTES, log: Callable[[str], None] = print,
        on_row: Callable[[dict], None] | None = None, resume: bool = False,
        budget: Budget | None = None) -> dict[str, Any]:
    """The part's base (trained, ``base_id`` in ``store``, or ``base_checkpoint`` scored as it is), then its rows
    and controls within ``minutes`` (counted from ``budget``'s start where given: the command's)."""
    budget = budget or Budget(None if minutes is None else 60 * minutes)
    t0 = time.perf_counter()
    epochs = base_epochs or presets.LITERATURE_EPOCHS[part]
    reused: dict[str, str] = {}
    wall = None
    if base_id:
        base_row = store.get(base_id)
        if base_row is None or base_row["state"] != "done" or not base_row.get("record"):
            raise SystemExit(f"--base-run {base_id}: no finished run of that id in {store.root}")
        epochs = base_row["spec"]["train"]["epochs"] if base_row["spec"]["method"]["name"] == "baseline" else 0
        reused["base"] = f"run {base_id}, given"
    elif base_checkpoint:
        job = spec(f"literature {part}: base (checkpoint)", data, {"checkpoint": base_checkpoint}, "baseline", {}, 0,
                   device, MEASURE)
        _, base_row, _ = run_job(job, store, resume)
        epochs, reused["base"] = 0, f"checkpoint {Path(base_checkpoint).name}, scored as it is"
    else:
        job = presets.cifar10_literature(data["path"], epochs={part: epochs}, device=device, data=data,
                                         measure=dict(MEASURE))[0]
        log(f"base: {part} {epochs} epochs (estimated {epochs * S_PER_EPOCH_GUESS[part] + OVERHEAD_S:.0f} s on an "
            f"H200; {budget.left():.0f} s left)")
        t = time.perf_counter()
        _, base_row, note = run_job(spec(job["name"], data, job["model"], "baseline", {}, epochs, device, MEASURE),
                                    store, resume)
        wall = None if note else time.perf_counter() - t
        if note:
            reused["base"] = note
    base = base_row["record"]
    p = pace(base_row, epochs, wall, part)
    log(f"base {base['run_id']}: top-1 {base['accuracy']:.4f}; {p['s_epoch']:.2f} s/epoch, {p['overhead_s']:.0f} s "
        f"a job ({p['how']}); {budget.left():.0f} s left")
    rewind = recovery_lr.recorded_training_lr(base)
    res = new_result(base, base_row, {"part": part, "base_epochs": epochs, "scale": scale, "data": data,
                                      "device": device, "rewind_lr": rewind, "pace": p, "minutes": minutes}, reused)
    todo = [r for r in recipes(part, scale, rewind) if not only or r.key in only]
    res["not_asked"] = [r.key for r in recipes(part, scale, rewind) if r not in todo]
    run_rows(todo, res, data, store, name=f"literature {part}", resume=resume, log=log, on_row=on_row,
             device=device, measure=MEASURE, budget=budget, estimate=estimator(p, base))
    res["wall_s"] = time.perf_counter() - t0
    return res


# -- rendering -------------------------------------------------------------------------------------
def kd_result(res: dict[str, Any], store: Store) -> dict | None:
    """KD − plain student, paired over the same test images (computed once, when both rows exist)."""
    rows = res["rows"]
    if "kd" not in res and {"kd", "plain"} <= set(rows):
        res["kd"] = quick_tour.kd_vs_plain(store, rows["kd"], rows["plain"])
    return res.get("kd")


def base_line(part: str, res: dict[str, Any]) -> str:
    base, s = res["base"], res["settings"]
    acc, target = base["accuracy"], presets.LITERATURE_TARGETS[part]
    gap = literature.base_gap_pt(acc, part, "cifar10")
    best = max((q.base_acc for q in literature.matching(part, "cifar10")), default=None)
    how = (f"trained {s['base_epochs']} epochs with the literature recipe (`presets.cifar10_literature`)"
           if s["base_epochs"] else "not trained here")
    line = (f"- Base: {part}, {how}, top-1 **{100 * acc:.2f} %** on {s['data'].get('test_limit') or 'all 10,000'} test "
            f"images (the preset's target {100 * target:.1f} %: {'met' if acc >= target else 'missed'}); "
            f"{base['macs'] / 1e6:.1f} M MACs" + (f" ({res['reused']['base']})" if "base" in res["reused"] else ""))
    if gap is not None and gap > 1:
        line += (f". **Flagged: {gap:.2f} pt below the literature's base ({best:.2f} %)**: the Δs below start from a "
                 "weaker net than the published rows'")
    elif gap is not None:
        line += f"; within 1 pt of the literature's base ({best:.2f} %)"
    return line + "."


def part_text(part: str, res: dict[str, Any], store: Store, cmd: str) -> str:
    """One net's sub-part: its base, rows, controls, pending jobs and a stamp (commit, date, machine)."""
    s, p = res["settings"], res["settings"]["pace"]
    kd = kd_result(res, store)
    teacher = res["base"]["accuracy"]
    kd_note = (f"; teacher (our base) {100 * teacher:.2f} %: "
               f"{'meets' if teacher >= TEACHER_BAR else 'below'} the {TEACHER_BAR:.0%} bar")
    lines = [f"#### {part} (CIFAR-10)", "", base_line(part, res),
             f"- Pace: {p['s_epoch']:.2f} s a base epoch, {p['overhead_s']:.0f} s a job ({p['how']})"
             + (f"; a cut net trained at {p['observed_share']:.2f} of the base's epoch time (its controls estimated at "
                "that)" if p.get("observed_share") else "")
             + f"; each job started only if its estimate fit what was left of {s['minutes']} min.", ""]
    lines += table_lines(recipes(part, s["scale"], s["rewind_lr"]), res, kd, part, kd_note)
    lines.append("")
    if not s["base_epochs"] and res["controls"]:
        lines.append("- **Controls short of their budget**: the base did not train here, so each control trained "
                     "only its row's own epochs, not the base's as well (`control_epochs`; the control method cannot "
                     "count a checkpoint's training): no \"beats its control\" verdict of this part answers the issue. "
                     "Finish a part in a later call with `--workspace W --resume` instead, W carried from the first.")
    elif STRUCTURED[part]:   # the "every structured row beats its control", on this net's rows
        lines += structured_controls_line(res, STRUCTURED[part])
    waiting = [k for k in res["pending"] if k not in res["skipped"]]
    if res["skipped"]:
        lines.append("- **Pending (not started: their estimate did not fit what was left):** "
                     + "; ".join(f"{k} ({why})" for k, why in res["skipped"].items()))
    if waiting:
        lines.append(f"- **Partial: not reached yet when this was written:** {', '.join(waiting)}")
    if res.get("not_asked"):
        lines.append(f"- Not run in this call (`--only`): {', '.join(res['not_asked'])}")
    if res.get("job_s"):
        lines.append("- Job seconds, measured (estimated): " + ", ".join(
            f"{k} {v:.0f}" + (f" ({res['estimated_s'][k]:.0f})" if k in res.get("estimated_s", {}) else "")
            for k, v in res["job_s"].items()))
    if res.get("wall_s") is not None:
        lines.append(f"- Whole part: {res['wall_s']:.0f} s.")
    lines += ["", f"_Part {part}: `{cmd}`, {report.versions()}, on {report.machine()}, "
                  f"{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}._"]
    return "\n".join(lines)


INTRO = ("### Literature table (issue 19, GPU)\n\n"
         "Each net is one part, written by its own `python -m bench literature --part NET` call (one device call of "
         "≤ 9 min each, so the parts may come from different sessions and commits: each says its own). Rows: our Δ "
         "vs our base at (about) the published MAC reduction, the published row beside it (`engine/literature.csv`), "
         "and the issue's target met or missed; each structured and low-rank row beside its control (the same family "
         "scaled to its MACs, trained from scratch for the same total epochs; it beats its control only where the "
         "paired 95 % interval of compressed − control lies above 0). Short schedules: the published rows train "
         "100-200 epochs after (or while) compressing. Accuracies only, no speed claims.")


def block_body(part: str, text: str, old_doc: str) -> str:
    """The whole ``gpu/literature`` block: this part's text fresh, every other net's as an earlier run left it."""
    found = report._markers(f"gpu/{BLOCK}").search(old_doc)
    body, _ = report.section_body(f"gpu/{BLOCK}", list(NETS), {part: text}, set(NETS) - {part},
                                  found.group(0) if found else "")
    return INTRO + "\n\n" + body


def main(argv: list[str]) -> int:
    budget = Budget(None)   # restarted below with --minutes: the deadline counts from here
    p = argparse.ArgumentParser(prog="python -m bench literature", description=__doc__.split("\n\n")[0])
    p.add_argument("--part", required=True, choices=NETS)
    p.add_argument("--minutes", type=float, default=MINUTES, help=f"wall-clock budget of the whole call (default "
                   f"{MINUTES}: one device call of <= 9 min); a job whose estimate no longer fits is left pending")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--cifar", default=None, help="CIFAR-10 zip (default: ../shared/datasets/cifar10.zip)")
    p.add_argument("--limit", type=int, default=None, help="training images (default: all)")
    p.add_argument("--test-limit", type=int, default=None, help="test images (default: all 10,000)")
    p.add_argument("--batch-size", type=int, default=None, help="default 512 on cuda, the engine's 64 on cpu")
    p.add_argument("--image-size", type=int, default=None, help="resize the images (a rehearsal's 16 px; default: "
                   "CIFAR's own 32)")
    p.add_argument("--base-epochs", type=int, default=None, help="default: presets.LITERATURE_EPOCHS")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="multiplies every row's epochs (at least 1 each)")
    p.add_argument("--tiny", action="store_true", help="a CPU rehearsal: --base-epochs 1 --epochs-scale 0 (1 epoch "
                   "a row) --limit 160 --test-limit 100 --image-size 16 unless given")
    p.add_argument("--base-run", default=None, help="id of a finished base run in --workspace to start from")
    p.add_argument("--base-checkpoint", default=None, help="a model.pt bundle to start from, scored as it is")
    p.add_argument("--save-base", default=None, help="copy the base's bundle here (to carry it to a later call)")
    p.add_argument("--workspace", default=None, help="store to use (default: a new temporary one)")
    p.add_argument("--resume", action="store_true", help="with --workspace: reuse every job whose exact spec "
                   "finished there")
    p.add_argument("--only", default="", help="comma list of rows (default: all of the part's)")
    p.add_argument("--rehearse", action="store_true", help="= --device cpu --tiny (scripts/gpu_session.sh --rehearse)")
    p.add_argument("--out", "--doc", default=None, help="write the block into this file instead of docs/BENCHMARKS.md")
    p.add_argument("--no-write", action="store_true", help="print the part instead of writing any file")
    a = p.parse_args(argv)
    if a.rehearse:
        a.device, a.tiny = "cpu", True
    if a.tiny:
        a.base_epochs = a.base_epochs or 1
        a.epochs_scale = 0 if a.epochs_scale == 1.0 else a.epochs_scale
        a.limit, a.test_limit, a.image_size = a.limit or 160, a.test_limit or 100, a.image_size or 16
    if (a.resume or a.base_run) and not a.workspace:
        p.error("--resume / --base-run use runs in --workspace: name one")
    if a.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            print("error: --device cuda needs a CUDA device (--device cpu --tiny rehearses on CPU)", file=sys.stderr)
            return 2
    cifar = a.cifar or settings.cifar10() or str(Path(__file__).resolve().parent.parent.parent / "shared" /
                                                  "datasets" / "cifar10.zip")
    if not Path(cifar).is_file():
        print(f"error: CIFAR-10 zip not found: {cifar} (pass --cifar)", file=sys.stderr)
        return 2
    budget.seconds = 60 * a.minutes
    home = Path(a.workspace or tempfile.mkdtemp(prefix="slimbench-literature-"))
    os.environ["SLIMBENCH_HOME"] = str(home)
    store = Store(home)
    data = data_spec(str(Path(cifar).resolve()), a.device, a.limit, a.test_limit, a.batch_size, a.image_size)
    cmd = "python -m bench literature " + " ".join(argv)
    doc = Path(a.out) if a.out else None
    only = set(filter(None, a.only.split(",")))
    if only - {r.key for r in recipes(a.part)}:
        p.error(f"--only: {', '.join(sorted(only - {r.key for r in recipes(a.part)}))} not in part {a.part}")
    if "small5x" in only:
        only.add("structured")   # its start
    if "kd" in only:
        only.add("plain")

    def log(msg: str) -> None:
        print(f"[literature {a.part} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def write(res: dict) -> None:
        """The block as it stands after every job: a call cut short keeps every finished row (marked partial)."""
        if not a.no_write:
            body = block_body(a.part, part_text(a.part, res, store, cmd), report.previous_text(doc))
            report.write_block("gpu", BLOCK, body, cmd, doc)

    res = run(a.part, data, store, device=a.device, base_epochs=a.base_epochs, scale=a.epochs_scale,
              base_id=a.base_run, base_checkpoint=a.base_checkpoint, only=only or None, minutes=a.minutes, log=log,
              on_row=write, resume=a.resume, budget=budget)
    if a.save_base and res["base"].get("checkpoint"):
        Path(a.save_base).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(res["base"]["checkpoint"], a.save_base)
        log(f"base bundle copied to {a.save_base}")
    write(res)
    if a.no_write:
        print(part_text(a.part, res, store, cmd))
    else:
        log(f"wrote the gpu/{BLOCK}/{a.part} part of {doc or report.DOC}")
    return 0 if not res["failed"] else 1
