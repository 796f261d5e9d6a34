"""``python -m bench autocompress --gpu``: issue 21's GPU targets, in ONE device call of at most 9 minutes.

From the CIFAR-10 ResNet-18 literature base (``engine.presets.cifar10_literature``: 40 epochs, batch 512, trained in
this call; or ``--base-run RUN`` from ``SLIMBENCH_HOME``'s store), within ``--minutes`` for the whole command:
(a) a size search within 1 pt of validation accuracy for the ">= 5x smaller at <= 1 pt" target (the seed's "80 %
smaller at 1 %"): objective size with target 5, so the most accurate trial at most 1/5 of the base's model.pt wins;
(b) a latency search on the GPU within 0.5 pt: objective latency, ``device`` cuda, runtime best (PyTorch eager on
CUDA or ONNX Runtime's CUDA provider, each model in its faster one, paired against the base there), INT8 left out
(``search_space.INT8_ON_CUDA``); the fastest model within the limit wins, with its paired speed-up against the
base on the GPU. Then, if the budget left allows (estimated from the searches' own trials), the hand-made presets
of the CPU block (``bench.autocompress.PRESETS``: structured to 1/2.1 of the MACs, INT8, and the two chained) on the
same base; a preset that does not fit is listed as not run. Last, one closing re-timing on the GPU: the latency
winner and the FP32 preset, each paired against the base in one judge (``search_latency.LatencyJudge``, the
search's own). A part that fails is recorded with its error and the others still run; the block is written after
every part, so a call stopped by its time limit keeps what it measured (marked incomplete).
Writes the ``gpu/autocompress`` block of docs/BENCHMARKS.md (``bench.report.write_block``).

``--rehearse`` (``REHEARSAL``: ``--device cpu`` and tiny settings) is the CPU rehearsal of the same path: the
block goes to ``--out``/``--doc`` or stdout, never to docs/BENCHMARKS.md.

On a lent GPU it runs as the part ``autocompress`` of scripts/gpu_session.sh, which sends back the device's copy of
docs/BENCHMARKS.md (the block rewritten after every part); here ``python -m bench take FILE`` lands its GPU section.

Budget arithmetic for the default ``--minutes 8`` (480 s of the 9-minute call; the rest covers the interpreter, its
imports and a trial that overruns its search's budget: a search starts no trial after its minutes, one running
then finishes). Estimates for an H200 with 16 cores, from ``presets.cifar10_literature`` (ResNet-18 ~2 s an epoch at
batch 512 on 45,000 images):
- CIFAR-10 load: decoding the 60,000 JPEGs once took 27.6 s on the 2-core development box (then a 177 MB tensor
  cache, read in no time by every later run of the process), say ~20 s there; the base: 40 epochs x ~2 s = ~80 s, and its measurement (CPU and GPU latency, ONNX export;
  deploy off) ~15 s: ~105 s. ``--base-run`` saves it.
- The closing re-timing (the judge loading the base in eager CUDA and ONNX Runtime CUDA, its agreement on 256 images,
  two models each paired in 5 ABBA rounds) ~15 s, and reading the results: ``CLOSING_S`` = 30 s is kept back.
- That leaves ~345 s. The three presets' estimate (below: ~25 + 2 x 35 = ~95 s, from the base's own run) is held
  back only if it is at most ``PRESETS_SHARE_MAX`` (25 %) of it, else they run only in what the searches leave:
  ~95 s is 28 %, so on the H200 they are likely not held for and said not run unless the searches end early
  (their recipes are the seeds' anyway: structured to 1/2.1 of the MACs, -> INT8, is the first seed of (a)).
  The searches: ``SIZE_SHARE`` 45 % to (a) (~155 s), the rest and whatever (a) left to (b) (~190 s), each search's
  minutes less one trial's estimate (the overrun).
- A trial: the fine-tune on the GPU (a pruned net is faster than the base: <= 2 s an epoch), its run's own
  measurement ~10 s, and for an INT8 trial the quantisation and its validation and test scoring on the CPU's 16
  cores (~10,000 + 5,000 images through an INT8 ResNet-18 at 32 px, ~1 GFLOP each: ~15 s). With ``--full-epochs 5``
  a seeded INT8 trial takes ~5 x 2 + 10 + 15 = ~35 s (the block-pruning seed, 8 epochs: ~40 s), an FP32 trial
  ~20 s plus ~5 s of GPU timing. So (a) fits its 3 seeded recipes (~110 s: structured to 1/2.1 and to 35 % of the
  MACs, blocks to ~31 %, each -> INT8) and one or two 1-epoch draws: ``--size-trials 5``; (b) its 4 seeds (the same
  cuts, FP32, and the aligned 39.5 % cut, ~100 s) and three or four draws: ``--latency-trials 8``. Promotion is
  off (``promote`` 0): the seeds are full recipes already, and a 40 % reserve for promotions would idle here.
- INT8 calibration: quantize_int8's default 8 training batches would be 4,096 images at batch 512, and ONNX
  Runtime's percentile calibration holds every activation of every calibration image in memory before its
  histograms (~1.2 M floats, ~4.7 MB, an image for this net: ~19 GB and minutes of numpy per INT8 trial), so
  ``--calibration-batches 1``: 512 images, as many as the CPU searches calibrate on (8 batches of 64).
- The presets run only if the budget left covers them (each ~ one trial of its search: ~35 s with INT8, ~25 s
  without), else the block says they were not run.
Measurement of every run: ONNX export on, deploy off (the search's judge times what it compares), 40 timed calls
(5 rounds of ABBA blocks of 4 in the judge), CPU throughput at batch 8 (the runs' own CPU figures are not what is
compared here).
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Callable

import torch

from engine import data as data_mod
from engine import export, presets, settings
from engine.methods import int8_formats, search_latency
from engine.runner import run_spec
from engine.spec import DataSpec, MeasureSpec
from engine.store import Store
from engine.validation import check_spec

from . import report
from .autocompress import PRESETS
from .recipe_table import Budget

SMALLER, SIZE_LIMIT_PT = 5.0, 1.0   # target (a): >= 5x smaller within 1 pt (the seed's 80 % smaller at 1 %)
SPEED_LIMIT_PT = 0.5                # target (b): the fastest GPU model within 0.5 pt
MINUTES = 8.0
CLOSING_S = 30.0
SIZE_SHARE = 0.45
PRESETS_SHARE_MAX = 0.25   # the presets' estimated time is held back from the searches only up to this share
SIZE_SPACE = ["prune_int8", "blocks_int8", "lowrank_int8"]   # INT8 alone is 4x at most: never >= 5x, not searched
SPEED_SPACE = ["prune", "blocks", "lowrank"]                 # the FP32 cuts: INT8 does not run faster on the GPU
MEASURE = {"onnx": True, "deploy": False, "latency_runs": 40, "warmup_runs": 5, "batch_size": 8, "paired_rounds": 0}


FP32_PRESET = next(k for k, v in PRESETS.items() if v["name"] == "prune_structured")


def measuring(a: argparse.Namespace) -> dict[str, Any]:
    return {**MEASURE, **({"latency_runs": a.latency_runs, "warmup_runs": 1} if a.latency_runs else {})}


def log(msg: str) -> None:
    print(f"[bench autocompress --gpu {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Clock(Budget):
    """The command's budget (``recipe_table.Budget``: seconds left of ``minutes``), and what each part took."""

    def __init__(self, minutes: float):
        super().__init__(minutes * 60)
        self.parts: dict[str, float] = {}

    def used(self) -> float:
        return self.clock() - self.t0

    def part(self, name: str, since: float) -> float:
        self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - since
        return self.parts[name]


def base_spec(a: argparse.Namespace) -> dict[str, Any]:
    """The literature ResNet-18 base (``presets.cifar10_literature``), shrunk by the tiny settings if given."""
    data = {"name": "cifar10", "path": a.cifar, "batch_size": a.data_batch}
    data.update({k: v for k, v in (("limit", a.limit), ("val_limit", a.val_limit), ("test_limit", a.test_limit),
                                   ("image_size", a.image_size)) if v})
    return presets.cifar10_literature(a.cifar, epochs={a.arch: a.base_epochs}, device=a.device, data=data,
                                      measure=measuring(a))[0]


def trial_estimate(base: dict[str, Any], base_epochs: int, epochs: int, int8: bool) -> float:
    """Seconds one trial of ``epochs`` fine-tune epochs should take, from the base's own run: its seconds an epoch
    and the rest of its job (data, evaluation, export, measurement: ``phase_seconds``), twice that for an INT8
    trial (quantised, then scored again on the CPU)."""
    train = base.get("train_seconds") or 0.0
    phases = base.get("phase_seconds") or {}
    overhead = max(5.0, sum(v for k, v in phases.items() if k != "train") if phases else 0.0)
    return epochs * train / max(1, base_epochs) + overhead * (2 if int8 else 1)


def with_int8(method: dict[str, Any], fmt: str, batches: int) -> dict[str, Any]:
    """A preset's method with its INT8 step as the searches' (format ``fmt``, auto: the preset's own; ``batches``
    calibration batches)."""
    def step(m: dict[str, Any]) -> dict[str, Any]:
        if m["name"] == "quantize_int8":
            return {**m, "params": {**m["params"], "calibration_batches": batches,
                                    **({} if fmt == "auto" else {"format": fmt})}}
        if m["name"] == "pipeline":
            return {**m, "params": {**m["params"], "steps": [step(s) for s in m["params"]["steps"]]}}
        return m
    return step(method)


def search(store: Store, base: dict[str, Any], data: dict[str, Any], a: argparse.Namespace, label: str,
           params: dict[str, Any]) -> dict[str, Any]:
    spec = {"name": f"autocompress bench (GPU): {label}", "data": data, "model": {"from_run": base["run_id"]},
            "train": {"epochs": 1, "device": a.device}, "measure": measuring(a),
            "method": {"name": "autocompress", "params": params}}
    t = time.perf_counter()
    rec = run_spec(check_spec(spec), store)
    rec["search_seconds"] = time.perf_counter() - t
    return rec


def judge_for(base: dict[str, Any], data: dict[str, Any], a: argparse.Namespace, folder: Path):
    """The search's own latency judge, for the closing re-timing: the base as the start, on ``device``."""
    loaded = data_mod.load(DataSpec(**data))
    start, _ = export.load_model(base["checkpoint"])
    ctx = types.SimpleNamespace(spec=types.SimpleNamespace(measure=MeasureSpec(**measuring(a))),
                                input_shape=tuple(base["input_size"]), run_dir=folder,
                                log=logging.getLogger("bench.autocompress_gpu"), data=loaded,
                                base_copy=lambda: copy.deepcopy(start).to("cpu").eval())
    return search_latency.LatencyJudge(ctx, a.runtime, a.batch, a.device)


def _error(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def run(a: argparse.Namespace, store: Store, emit: Callable[[dict[str, Any]], None] = lambda res: None
        ) -> dict[str, Any]:
    """The bench; ``emit(res)`` after each part with what is measured so far (a call stopped by its time limit keeps
    it). A search, preset or the closing re-timing that fails is recorded with its error and the rest still runs:
    one device call must not lose (a) to a fault in (b)."""
    clock = Clock(a.minutes)
    res: dict[str, Any] = {"device": a.device, "device_name": search_latency.device_name(a.device), "batch": a.batch,
                           "runtime": a.runtime, "minutes": a.minutes, "parts": clock.parts, "errors": {},
                           "runtimes": {r: search_latency.unavailable(r, a.device)
                                        for r in ("eager", "onnxruntime", "openvino")},
                           "presets": {}, "skipped": {}, "closing": {}, "fronts": {}}

    def done(part: str, t: float) -> None:
        clock.part(part, t)
        res["seconds"] = clock.used()
        emit(res)

    def attempt(part: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as e:   # said in the block; the other parts still run
            res["errors"][part] = _error(e)
            log(f"{part} failed: {res['errors'][part]}")
            return None

    t = time.perf_counter()
    if a.base_run:
        row = store.get(a.base_run)
        if row is None or row["state"] != "done":
            raise SystemExit(f"error: --base-run: no finished run {a.base_run!r} in {store.root}")
        base, data = row["record"], row["spec"]["data"]
        base_epochs = int((row["spec"].get("train") or {}).get("epochs") or 1)
        about = f"Base: run {a.base_run} ({base.get('arch')}, test top-1 {base['accuracy']:.4f}), given with --base-run."
    else:
        spec = base_spec(a)
        data, base_epochs = spec["data"], a.base_epochs
        log(f"training the base ({a.arch}, {a.base_epochs} epoch(s), batch {a.data_batch}, on {a.device})")
        base = run_spec(check_spec(spec), store)
        about = (f"Base: {a.arch} trained in this call as `presets.cifar10_literature` does ({a.base_epochs} epochs, "
                 f"batch {a.data_batch}, CIFAR-10 {Path(a.cifar).name}"
                 + "".join(f", {k.replace('_', ' ')} {data[k]}" for k in ("limit", "val_limit", "test_limit",
                                                                        "image_size") if data.get(k))
                 + f"): test top-1 {base['accuracy']:.4f}, trained in {base.get('train_seconds') or 0:.0f} s.")
    full, ft = a.full_epochs, a.finetune_epochs
    est_int8, est_fp32 = (trial_estimate(base, base_epochs, full, int8) for int8 in (True, False))
    res.update(base=base, about=about, settings={"full_epochs": full, "finetune_epochs": ft, "est_int8": est_int8,
                                                 "int8": f"format {a.int8_format}, calibrated on "
                                                         f"{a.calibration_batches} training batch(es) of "
                                                         f"{data.get('batch_size') or 64}",
                                                 "est_fp32": est_fp32, "size_trials": a.size_trials,
                                                 "latency_trials": a.latency_trials})
    done("base", t)
    # The presets' time is kept back only where it is a modest share: the searches (the targets) come first.
    presets_est = est_fp32 + 2 * est_int8
    held = presets_est if not a.no_presets and presets_est <= PRESETS_SHARE_MAX * (clock.left() - CLOSING_S) else 0.0
    res["settings"]["presets_held_s"] = held
    searches_s = max(0.0, clock.left() - CLOSING_S - held)
    common = {"finetune_epochs": ft, "full_epochs": full, "promote": 0, "seeded": True, "int8_format": a.int8_format,
              "int8_calibration_batches": a.calibration_batches}

    size_s = res["settings"]["size_s"] = max(1.0, SIZE_SHARE * searches_s - est_int8)
    log(f"(a) size search: {size_s:.0f} s, at most {a.size_trials} trials (a trial ~{est_int8:.0f} s)")
    t = time.perf_counter()
    size = res["size"] = attempt("size search", lambda: search(store, base, data, a, "size within 1 pt", {
        **common, "objective": "size", "target": SMALLER, "max_drop_pt": SIZE_LIMIT_PT, "trials": a.size_trials,
        "minutes": size_s / 60, "space": SIZE_SPACE}))
    res["fronts"].update(fronts(store, size))
    done("size search", t)

    speed_s = res["settings"]["speed_s"] = max(1.0, clock.left() - CLOSING_S - held - est_fp32)
    log(f"(b) latency search on {a.device}: {speed_s:.0f} s, at most {a.latency_trials} trials")
    t = time.perf_counter()
    speed = res["speed"] = attempt("latency search", lambda: search(
        store, base, data, a, f"latency on {a.device} within 0.5 pt", {
            **common, "objective": "latency", "device": a.device, "runtime": a.runtime, "batch": a.batch,
            "max_drop_pt": SPEED_LIMIT_PT, "trials": a.latency_trials, "minutes": speed_s / 60,
            "space": SPEED_SPACE}))
    res["fronts"].update(fronts(store, speed))
    done("latency search", t)

    # The presets, each only if what is left covers it: estimated from the searches' own trials (seconds a trial;
    # the base's estimate where a search failed).
    per_trial = {k: rec["search_seconds"] / max(1, rec.get("search_trials") or 0) if rec else est
                 for k, rec, est in (("size", size, est_int8), ("speed", speed, est_fp32))}
    start = {"data": data, "model": {"from_run": base["run_id"]}, "train": {"epochs": 1, "device": a.device},
             "measure": measuring(a)}
    t = time.perf_counter()
    for label in (FP32_PRESET, *[k for k in PRESETS if k != FP32_PRESET]):
        need = per_trial["speed" if label == FP32_PRESET else "size"]
        left = clock.left() - CLOSING_S
        if a.no_presets or left < need:
            res["skipped"][label] = ("not run: --no-presets" if a.no_presets else
                                     f"not run: {max(0.0, left):.0f} s of the budget left, ~{need:.0f} s needed "
                                     "(a trial of the search it compares with)")
            continue
        log(f"preset: {label}")
        rec = attempt(f"preset {label}", lambda label=label: run_spec(check_spec({
            **start, "name": f"autocompress bench (GPU): {label}",
            "method": with_int8(PRESETS[label], a.int8_format, a.calibration_batches)}), store))
        if rec is not None:
            res["presets"][label] = rec
        else:
            res["skipped"][label] = f"failed: {res['errors'][f'preset {label}']}"
    done("presets", t)

    t = time.perf_counter()
    res["closing"] = attempt("closing re-timing", lambda: closing_times(
        base, data, a, speed or {}, res["presets"].get(FP32_PRESET), store)) or {}
    done("closing", t)
    return res


def fronts(store: Store, rec: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The records of a search's front runs (test accuracy, size), by run id."""
    return {t["run_id"]: store.get(t["run_id"])["record"] for t in (rec or {}).get("search_front") or []}


def closing_times(base: dict[str, Any], data: dict[str, Any], a: argparse.Namespace, speed: dict[str, Any],
                  preset: dict[str, Any] | None, store: Store) -> dict[str, Any]:
    """The latency winner and the FP32 preset timed again in one judge, each paired with the base on ``device``."""
    models = {}
    if speed.get("search_winner"):
        models["winner"] = store.get(speed["search_winner"])["record"]["checkpoint"]
    if preset is not None:
        models[FP32_PRESET] = preset["checkpoint"]
    if not models:
        return {}
    with tempfile.TemporaryDirectory(prefix="bench-ac-gpu-") as tmp:
        judge = judge_for(base, data, a, Path(tmp))
        try:
            out = {k: judge.time(export.load_model(path)[0].to("cpu").eval(), tag=k.replace(" ", "-")[:20])
                   for k, path in models.items()}
        finally:
            judge.close()
    return {**out, "_start_runtime": judge.label(judge.start_runtime)}


def _drop(base: dict[str, Any], rec: dict[str, Any]) -> float | None:
    return None if rec.get("accuracy") is None else 100 * (base["accuracy"] - rec["accuracy"])


def _smaller(base: dict[str, Any], rec: dict[str, Any]) -> float | None:
    return base["size_bytes"] / rec["size_bytes"] if base.get("size_bytes") and rec.get("size_bytes") else None


def _stopped(s: dict[str, Any]) -> str:
    stopped = [t for t in s["search_trial_list"] if t["state"] in ("pruned", "fail")]
    return f"{len(stopped)}" + ("" if not stopped else ": " + "; ".join(
        f"trial {t['trial']} ({t['recipe']}): {t['why']}" for t in stopped))


def _budget(s: dict[str, Any], given_s: float) -> str:
    return (f"budget {given_s / 60:.1f} min (no trial starts after it), used {s['search_seconds'] / 60:.1f} min "
            f"(with its start-up and a trial running at the end); {s['search_trials']} trial(s) finished or stopped; "
            f"stopped early or failed: {_stopped(s)}")


def _missing(res: dict[str, Any], key: str, part: str, title: str) -> list[str] | None:
    """A part's lines when it did not finish: failed (its error) or not reached (the command stopped first)."""
    if key not in res:
        return [title, "", f"- Not reached: the command stopped before the {part} (written "
                f"{res.get('seconds', 0):.0f} s into it)."]
    if res[key] is None:
        return [title, "", f"- **Failed**: {res['errors'].get(part, '?')}."]
    return None


def size_part(res: dict[str, Any]) -> list[str]:
    title = f"#### (a) >= {SMALLER:g}x smaller within {SIZE_LIMIT_PT:g} pt"
    if (gone := _missing(res, "size", "size search", title)) is not None:
        return gone
    base, s = res["base"], res["size"]
    rows = []
    for t in s["search_front"]:
        rec = res["fronts"][t["run_id"]]
        rows.append({"model": f"trial {t['trial']}: {t['recipe']}", "val_drop": t["drop_pt"],
                     "acc": rec.get("accuracy"), "drop": _drop(base, rec), "x": _smaller(base, rec),
                     "mb": rec.get("size_bytes", 0) / 1e6, "win": t["run_id"] == s["search_winner"]})
    lines = [title, "",
             f"- Search: objective size (model.pt bytes) with target {SMALLER:g} (the most accurate trial at most "
             f"1/{SMALLER:g} of the base's file wins) within {SIZE_LIMIT_PT:g} pt of validation accuracy; candidates "
             f"{', '.join(SIZE_SPACE)} (INT8 alone is at most 4x smaller: not searched), the seeded recipes first "
             f"with {res['settings']['full_epochs']} fine-tune epochs (block pruning: its own 8), draws with "
             f"{res['settings']['finetune_epochs']}; INT8 {res['settings'].get('int8', 'as quantize_int8 defaults')}; "
             + _budget(s, res["settings"]["size_s"]) + ".",
             "- Chosen on the validation split; only the front was scored on the test split.", "",
             report.table(rows, [("model", "front model"), ("val_drop", "val drop", report.points),
                                 ("acc", "test top-1", report.top1), ("drop", "test drop", report.points),
                                 ("x", "x smaller", report.times), ("mb", "MB")]) if rows else "No trial was scored.",
             ""]
    win = next((r for r in rows if r["win"]), None)
    head = f"- Target (>= {SMALLER:g}x smaller, <= {SIZE_LIMIT_PT:g} pt lost on validation)"
    if win is not None and (win["x"] or 0) >= SMALLER:
        lines.append(f"{head}: **met** by {win['model']}: {win['x']:.2f}x smaller, val drop {win['val_drop']:.2f} pt, "
                     f"test drop {win['drop']:.2f} pt.")
    else:
        close = s.get("search_closest") or []
        lines.append(f"{head}: **missed**; " + ("; ".join(f"trial {t['trial']} ({t['recipe']}): {t['bound_by']}"
                                                          for t in close) or "no trial was scored") + ".")
    return lines


def _runtimes(res: dict[str, Any]) -> str:
    """Which runtimes could time models on the device here, and why the others could not."""
    rts = res.get("runtimes") or {}
    if not rts:
        return ""
    ok = [r for r, why in rts.items() if why is None]
    return (f" Runtimes on {res['device']} here: {', '.join(ok) or 'none'}"
            + "".join(f"; {r}: {why}" for r, why in rts.items() if why is not None) + ".")


def speed_part(res: dict[str, Any]) -> list[str]:
    title = f"#### (b) The fastest model on the GPU within {SPEED_LIMIT_PT:g} pt"
    if (gone := _missing(res, "speed", "latency search", title)) is not None:
        return gone
    base, s, closing = res["base"], res["speed"], res["closing"]
    rows = []
    for t in s["search_front"]:
        rec = res["fronts"][t["run_id"]]
        win = t["run_id"] == s["search_winner"]
        again = closing.get("winner") if win else None
        rows.append({"model": f"trial {t['trial']}: {t['recipe']}", "runtime": t.get("runtime"),
                     "ms": t.get("cost"), "base_ms": t.get("start_latency_ms"),
                     "x": 1 / t["cost_ratio"] if t.get("cost_ratio") else None,
                     "again": again["speedup"] if again else None, "val_drop": t["drop_pt"],
                     "drop": _drop(base, rec), "smaller": _smaller(base, rec), "win": win})
    lines = [title, "",
             f"- Search: objective latency on {res['device_name']} at batch {res['batch']}, runtime {res['runtime']}"
             + (" (PyTorch eager on CUDA or ONNX Runtime's CUDA provider, each model in its faster one)"
                if res["runtime"] == "best" and res["device"] == "cuda" else "")
             + f", within {SPEED_LIMIT_PT:g} pt of validation accuracy; candidates {', '.join(SPEED_SPACE)} (the "
             "seeded cuts without INT8, FP32: INT8 is left out, ONNX Runtime's CUDA provider does not speed QDQ INT8 "
             "up), the seeded cuts first; "
             + _budget(s, res["settings"]["speed_s"]) + ".",
             f"- Timing: {s.get('search_timing') or '–'}. The base's own runtime: {s.get('search_start_runtime')}."
             + _runtimes(res),
             "", report.table(rows, [("model", "front model"), ("runtime", "timed in"), ("ms", "latency (ms)"),
                                     ("base_ms", "base there (ms)"), ("x", "x faster (search, paired)", report.times),
                                     ("again", "x faster (closing re-timing)", report.times),
                                     ("val_drop", "val drop", report.points), ("drop", "test drop", report.points),
                                     ("smaller", "x smaller", report.times)]) if rows else "No trial was scored.",
             ""]
    win = next((r for r in rows if r["win"]), None)
    head = f"- Target (the fastest GPU model within {SPEED_LIMIT_PT:g} pt)"
    if win is not None and (win["x"] or 0) > 1:
        lines.append(f"{head}: **met** by {win['model']}: {win['x']:.2f}x faster than the base on {res['device']} (paired, "
                     f"{win['runtime']} against the base at its fastest"
                     + (f"; {win['again']:.2f}x in the closing re-timing" if win["again"] else "")
                     + f"), val drop {win['val_drop']:.2f} pt, test drop {win['drop']:.2f} pt.")
    elif win is not None:
        lines.append(f"{head}: **missed**: the winner, {win['model']}, is not faster than the base "
                     f"({win['x']:.2f}x); on this GPU at batch {res['batch']} none of the cuts within the limit ran faster.")
    else:
        close = s.get("search_closest") or []
        lines.append(f"{head}: **missed**: no trial within {SPEED_LIMIT_PT:g} pt; closest: "
                     + ("; ".join(f"trial {t['trial']} ({t['recipe']}): {t['bound_by']}" for t in close)
                        or "none scored") + ".")
    return lines


def presets_part(res: dict[str, Any]) -> list[str]:
    """The presets that fit the budget, beside the searches' winners (size: test figures; speed: the closing
    re-timing, where the latency winner and the FP32 preset were paired with the base in one judge)."""
    base, closing = res["base"], res["closing"]
    where = "the GPU" if res["device"] == "cuda" else res["device"]
    lines = ["#### The hand-made presets on the same base", "",
             f"The CPU block's presets (`bench.autocompress.PRESETS`), their INT8 steps as the searches' "
             f"({res['settings'].get('int8', 'quantize_int8 defaults')}); "
             + (f"{res['settings']['presets_held_s']:.0f} s of the budget was held back for them."
                if res["settings"].get("presets_held_s") else
                "no time was held back for them (the searches come first): each ran only if what the searches left "
                "covered it."), ""]
    rows = []
    for label, rec in res["presets"].items():
        timed = closing.get(label)
        rows.append({"model": label, "acc": rec.get("accuracy"), "drop": _drop(base, rec), "x": _smaller(base, rec),
                     "fast": timed["speedup"] if timed else None, "runtime": timed["runtime"] if timed else
                     f"INT8: not timed on {where}" if res["device"] == "cuda" else "INT8: not timed (FP32 search)"})
    if rows:
        lines += [report.table(rows, [("model", "preset"), ("acc", "test top-1", report.top1),
                                      ("drop", "test drop", report.points), ("x", "x smaller", report.times),
                                      ("fast", f"x faster on {where} (closing re-timing)", report.times),
                                      ("runtime", "timed in")]), ""]
        ok = [r for r in rows if r["drop"] is not None and r["drop"] <= SIZE_LIMIT_PT]
        small = max(ok, key=lambda r: r["x"] or 0, default=None)
        sized = res.get("size") or {"search_front": [], "search_winner": None}
        size_win = next((t for t in sized["search_front"] if t["run_id"] == sized["search_winner"]), None)
        won = _smaller(base, res["fronts"][size_win["run_id"]]) if size_win else None
        if small is not None:
            lines.append(f"- Smallest preset within {SIZE_LIMIT_PT:g} pt (test): {small['model']}, "
                         f"{small['x'] or 0:.2f}x smaller; the size search's winner: "
                         + (f"{won:.2f}x ({'as small or smaller' if won >= (small['x'] or 0) else 'larger'})."
                            if won else "none."))
        fp32 = closing.get(FP32_PRESET)
        if fp32 is not None:
            again = closing.get("winner")
            lines.append(f"- Speed on {where} (closing re-timing, each paired with the base): {FP32_PRESET} "
                         f"{fp32['speedup']:.2f}x in {fp32['runtime']}; the latency search's winner "
                         + (f"{again['speedup']:.2f}x in {again['runtime']}." if again else "none."))
    for label, why in res["skipped"].items():
        lines.append(f"- {label}: {why}.")
    return lines


def section(res: dict[str, Any]) -> str:
    """The ``gpu/autocompress`` block from a finished bench (``run``'s result)."""
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in res["parts"].items())
    rehearsal = res["device"] != "cuda"
    finished = "closing" in res["parts"]
    other = {k: v for k, v in res.get("errors", {}).items() if k in ("closing re-timing",)}
    lines = ["### Auto-compress (GPU)", "",
             *([f"**CPU rehearsal** (`--device cpu`, tiny settings): the GPU path run on {res['device_name']}; its "
                "figures say nothing about a GPU.", ""] if rehearsal else []),
             f"{res['about']} Device: {res['device_name']}.",
             f"- Budget: {res['minutes']:g} min for the whole command; used {res['seconds'] / 60:.1f} min ({parts})"
             + ("." if finished else "; **incomplete**: written as the command went, it did not finish."),
             *[f"- {k} **failed**: {v}." for k, v in other.items()],
             "", *size_part(res), "", *speed_part(res),
             "", *(presets_part(res) if "presets" in res["parts"] else
                   ["#### The hand-made presets on the same base", "", "- Not reached: the command stopped first."])]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench autocompress --gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true", help="this bench (the switch that selects it)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cuda (the bench); cpu: the rehearsal, which never writes docs/BENCHMARKS.md")
    p.add_argument("--minutes", type=float, default=MINUTES, help="the whole command's budget")
    p.add_argument("--base-run", default=None, help="a finished base run in SLIMBENCH_HOME's store (not trained)")
    p.add_argument("--cifar", default=None, help="CIFAR-10 zip (default: settings, else ../shared/datasets/cifar10.zip)")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--base-epochs", type=int, default=presets.LITERATURE_EPOCHS["resnet18"])
    p.add_argument("--data-batch", type=int, default=512, help="training batch (the literature setting's 512)")
    p.add_argument("--limit", type=int, default=None, help="tiny settings: training images")
    p.add_argument("--val-limit", type=int, default=None, help="tiny settings: validation images")
    p.add_argument("--test-limit", type=int, default=None, help="tiny settings: test images")
    p.add_argument("--image-size", type=int, default=None, help="tiny settings: resize the images")
    p.add_argument("--batch", type=int, default=1, help="the latency search's batch (1: as the records' GPU latency)")
    p.add_argument("--runtime", default="best", choices=("best", "eager", "onnxruntime"),
                   help="the latency search's runtime (best: each model's faster of eager and ONNX Runtime on CUDA)")
    p.add_argument("--int8-format", default="auto", choices=("auto", *int8_formats.FORMATS),
                   help="the INT8 step's format (auto: quantize_int8's own choice on this CPU)")
    p.add_argument("--calibration-batches", type=int, default=1,
                   help="the INT8 step's calibration batches (1 = 512 images at batch 512; see the docstring)")
    p.add_argument("--latency-runs", type=int, default=None, help="tiny settings: timed calls per model (default 40)")
    p.add_argument("--size-trials", type=int, default=5)
    p.add_argument("--latency-trials", type=int, default=8)
    p.add_argument("--finetune-epochs", type=int, default=1, help="a drawn trial's short fine-tune")
    p.add_argument("--full-epochs", type=int, default=5, help="a seeded trial's fine-tune")
    p.add_argument("--no-presets", action="store_true", help="do not run the hand-made presets")
    p.add_argument("--no-write", action="store_true", help="print the block instead of writing BENCHMARKS.md")
    p.add_argument("--out", default=None, help="write the block to this file (as it would stand in BENCHMARKS.md, "
                   "stamped with this machine; a device call: $OUT/autocompress-gpu.md)")
    p.add_argument("--doc", default=None, help="also write the block into this copy of BENCHMARKS.md (a rehearsal's "
                   "scratch copy: scripts/gpu_session.sh --rehearse autocompress)")
    p.add_argument("--rehearse", action="store_true", help="the CPU rehearsal at tiny settings (REHEARSAL, below; "
                   "flags given after it win)")
    return p


# --rehearse: the whole GPU path on the CPU in about a minute (tests/test_bench_autocompress_gpu.py runs the same).
REHEARSAL = ["--device", "cpu", "--arch", "resnet20", "--limit", "300", "--val-limit", "100", "--test-limit", "200",
             "--image-size", "16", "--base-epochs", "1", "--data-batch", "64", "--size-trials", "2",
             "--latency-trials", "2", "--full-epochs", "1", "--minutes", "2", "--latency-runs", "6",
             "--int8-format", "qdq_reduce_range"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[2:] if argv is None else argv)
    if "--rehearse" in argv:   # its tiny settings first, so that a flag the caller gives wins
        argv = REHEARSAL + [x for x in argv if x != "--rehearse"]
    a = parser().parse_args(argv)
    bad = report.out_of_range((("--minutes", a.minutes, 0.05, 1e4), ("--base-epochs", a.base_epochs, 1, 1000),
                               ("--size-trials", a.size_trials, 1, 1000), ("--latency-trials", a.latency_trials, 1, 1000),
                               ("--full-epochs", a.full_epochs, 1, 1000),
                               ("--finetune-epochs", a.finetune_epochs, 1, 1000), ("--batch", a.batch, 1, 4096)))
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    if a.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: this machine has no CUDA device; rehearse the same path on the CPU with "
              "--device cpu and tiny settings", file=sys.stderr)
        return 2
    a.cifar = a.cifar or settings.cifar10() or str(presets.SHARED_CIFAR10)
    if not a.base_run and not Path(a.cifar).is_file():
        print(f"error: --cifar: CIFAR-10 zip not found: {a.cifar}", file=sys.stderr)
        return 2
    home = os.environ.get("SLIMBENCH_HOME")
    store = Store(Path(home) if home else Path(tempfile.mkdtemp(prefix="slimbench-autocompress-gpu-")))
    cmd = ("python -m bench autocompress " + " ".join(argv if argv is not None else sys.argv[2:])).strip()
    to_doc = a.device == "cuda" and not a.no_write   # the rehearsal never writes docs/BENCHMARKS.md

    def emit(res: dict[str, Any]) -> None:
        """The block as measured so far, written where it goes: a call stopped by its time limit keeps it."""
        body = section(res)
        if a.out:   # with its markers and this machine's stamp
            Path(a.out).write_text(report.render_block("gpu", "autocompress", body, cmd) + "\n")
        if to_doc:
            report.write_block("gpu", "autocompress", body, cmd)
        if a.doc:
            report.write_block("gpu", "autocompress", body, cmd, Path(a.doc))

    res = run(a, store, emit)
    body = section(res)
    emit(res)
    if a.out:
        log(f"wrote {a.out}")
    if to_doc:
        log(f"wrote {report.DOC}")
    elif not a.out:
        print(body)
    return 1 if res["errors"] else 0
