"""autocompress: search methods and pipelines for the cheapest model within an accuracy limit.

Optuna's TPE sampler (single objective, with the accuracy limit and any target as trial constraints) draws
a recipe per trial from ``search_space``; each trial runs as a normal child run of the search (its
own record, bundle and downloads). Honest selection: a trial is judged by its model's accuracy on the
VALIDATION split, scored here against the start's on the same split; the test accuracy every run
records is read only at the end, for the trials on the final Pareto front, and steers nothing.

Cheap first: a trial whose model cannot meet a MACs or size target (known before training, see
``search_space``) is refused untrained; a trial whose fine-tune ends more than ``prune_margin_pt``
beyond the limit is stopped there (Optuna's ThresholdPruner), before INT8, export and timing.
Both are recorded with why. The start as plain INT8 (no knob, no training) is the first trial; then (``seeded``)
the recipes measured to work (``search_space.SEEDS``: structured pruning to 1/2.1 and to 35 % of the MACs -> INT8, for
latency an aligned 39.5 % cut, and block pruning to a ResNet-8's 31 % -> INT8) with
their full fine-tune (``full_epochs``, or the seed's own epochs where its measurement needed more; at the rewound
rate, no KD: as measured), which are never promoted. Trials get
a short fine-tune (``finetune_epochs``); then the ``promote`` best of them on or near their front (by
validation accuracy and cost) run again with the full recipe (``full_epochs``, KD-assisted where the
method has a distillation-assisted fine-tune), inside the same trial budget and, with a time budget, in
its last ``1 - PROXY_SHARE``; budget they leave goes to more short trials.

Resume: the study is a journal file in the search's run folder. A search restarted on the same run
(``python -m engine autocompress --resume RUN``, or a job retried) keeps its finished trials, marks
the one that was running when it died as failed, runs only the trials left of its budget, and never
runs a recipe a finished trial already ran.

Latency (objective ``latency``) is "latency at batch ``batch`` in runtime ``runtime`` on this
machine": each scored trial's model is timed in this process in that runtime (eager, onnxruntime,
openvino, or ``best``: the fastest here, per model), interleaved with the start exported to the SAME
runtime (``search_latency``, on ``measure.paired_speedup``); its cost_ratio is 1 / that speed-up, so a
runtime's own gain is never credited to compression. An INT8 trial's file is timed under ``best`` in each INT8
runtime here (ONNX Runtime and OpenVINO), each against the FP32 start in that runtime. ``best`` never judges a
model in a runtime whose top-1 answers disagree with the model's own (an FP32 model's eager answers, an INT8 model's
in its format's runtime): agreement recorded, the runtime refused with why. A runtime this
machine lacks is refused up front with deploy's reason.

Latency on the GPU (``device`` cuda): the start and every trial are timed the same way on this machine's CUDA device,
in PyTorch eager there or ONNX Runtime's CUDA execution provider (``best``: the faster of the two per model), paired
as on the CPU. INT8 is left out of such a search (``search_space.for_device``: an INT8 candidate runs as its FP32
cut, INT8 alone is dropped, and the record's ``search_timing`` says so): ONNX Runtime's CUDA provider does not speed
QDQ INT8 up, and an INT8 file timed on the CPU would not be comparable with GPU figures. ``device`` cuda on a
machine without CUDA is refused up front. The record names the device (``search_latency_device``).

Parallel (``parallel`` > 1, or any search under ``SLIMBENCH_BACKEND=ray``): trials run as child
processes or Ray tasks, several at once (``parallel_trials``), with the same budget, pruning,
no-repeat and resume rules. Latency stays honest by timing the final figures alone: a trial timed
during the search may have shared the cores with another trial's training, so with objective
``latency`` every scored trial is timed again after the search, in the same runtime and at the same
batch, with no trial running; selection and the front use those figures (``retimed``, with the first
as ``latency_during_search_ms``), and ``search_timing`` says which was done. A serial local search
times each trial as it ends, with nothing else of the search running. A trial run whose search
process died stops itself (``runner``: it watches its search's heartbeat), so no orphan runs on.

Energy (objective ``energy``, the records' CPU mJ per image) is offered only where this machine can
read its RAPL counter (``objectives_here``); elsewhere the spec is refused, saying why.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from .. import child_runs, conditions, export, layout, training
from ..accuracy_text import change, percent
from ..errors import Cancelled, JobFailed
from ..spec import SpecError
from ..store import new_run_id
from . import Param, int8_formats, parallel_trials, register, search_latency
from .quantize import Int8Model
from .search_space import (CANDIDATES, DEFAULT_SPACE, DEVICES, FULL_KD, SEEDS, TUNED, Draw, draw, for_device,
                           seeds_for)

OBJECTIVES = {"size": "size_bytes", "macs": "macs", "latency": "latency_ms", "energy": "energy_mj_per_image"}
STUDY = "autocompress"
JOURNAL = "study.journal"
LATENCY_ATTRS = ("start_runtime", "start_latency_ms", "runtime_agreement", "runtimes_refused")
PROXY_SHARE = 0.6         # with promotions and a time budget: the short-fine-tune trials start within this share
TARGET_SLACK = 1.05       # a structured cut meets its MAC target within 5 %: a proxy this close still trains


def energy_unmeasurable() -> str | None:
    """Why this machine cannot measure the energy per image a trial's record would carry (None: it can).
    The records' energy_mj_per_image comes from the CPU's RAPL counters (root-only on most kernels)."""
    return conditions.EnergyMeter("cpu").reason


def cuda_here() -> bool:
    """Whether this machine has a CUDA device to time a latency search on (``device`` cuda)."""
    return torch.cuda.is_available()


def objectives_here() -> list[str]:
    """The objectives this machine can measure: ``energy`` only where its counter is readable."""
    return [o for o in OBJECTIVES if o != "energy" or energy_unmeasurable() is None]


def _check(params: dict, spec: Any) -> None:
    if params["trials"] == 0:
        raise SpecError("method.params.trials", "a search budget of 0 trials runs nothing; give at least 1")
    if params["minutes"] is not None and params["minutes"] <= 0:
        raise SpecError("method.params.minutes", "a search budget of 0 minutes runs nothing; leave it out or give "
                        "a positive number")
    space = params["space"]
    if not space or not all(isinstance(c, str) for c in space):
        raise SpecError("method.params.space", f"give one or more of {', '.join(CANDIDATES)}")
    unknown = [c for c in space if c not in CANDIDATES]
    if unknown:
        raise SpecError("method.params.space", f"unknown candidate {unknown[0]!r}; valid: {', '.join(CANDIDATES)}")
    if params["objective"] == "energy" and (why := energy_unmeasurable()):
        raise SpecError("method.params.objective", f"energy is not measurable on this machine ({why})")
    if params["objective"] == "energy" and params["parallel"] > 1:   # RAPL counts the whole CPU package
        raise SpecError("method.params.parallel", "objective energy needs trials one at a time: the CPU package's "
                        "counter would count every trial training meanwhile; give parallel 1")
    device = params["device"]
    if params["objective"] != "latency" and device != "cpu":
        raise SpecError("method.params.device", "a device is chosen for the latency objective only; with "
                        f"objective {params['objective']} leave device at cpu")
    if device == "cuda" and not cuda_here():
        raise SpecError("method.params.device", "device cuda: this machine has no CUDA device "
                        "(torch.cuda.is_available() is false); time on cpu, or run the search on a machine with a GPU")
    if params["objective"] == "latency" and (why := search_latency.unavailable(params["runtime"], device)):
        raise SpecError("method.params.runtime", f"{params['runtime']} cannot time the trials"
                        + (f" on {device}" if device != "cpu" else "") + f": {why}")
    if not for_device(space, device)[0]:
        raise SpecError("method.params.space", f"nothing left to search on {device}: "
                        + "; ".join(f"{c}: {why}" for c, why in for_device(space, device)[1].items()))
    if params["objective"] != "latency" and params["runtime"] != "eager":
        raise SpecError("method.params.runtime", "a runtime is chosen for the latency objective only; with "
                        f"objective {params['objective']} leave runtime at eager")
    if params["objective"] != "latency" and params["batch"] != 1:
        raise SpecError("method.params.batch", "a batch is chosen for the latency objective only; with "
                        f"objective {params['objective']} leave batch at 1")
    if spec is not None and not spec.model.from_run:
        raise SpecError("model.from_run", "autocompress starts from a finished run (its record has the start's "
                        "size, MACs and latency the search compares with)")


@register("autocompress", family="search", check=_check, params=[
    Param("max_drop_pt", "float", 1.0, "accuracy the search may lose, in points of VALIDATION accuracy against the "
          "start", low=0.0, high=100.0),
    Param("objective", "str", "size", "what to minimise, or what target bounds: size (model.pt bytes), macs, "
          "latency (at batch `batch` in runtime `runtime` on `device`, timed against the start) or energy (CPU mJ per image, the record's "
          "energy_mj_per_image: only where this machine can read its RAPL counter)", choices=tuple(OBJECTIVES)),
    Param("target", "float", None, "a budget to meet instead of a cost to minimise: the objective must fall to "
          "1/target of the start's (4 = 4x smaller); then the most accurate trial within it wins",
          low=1.0, high=1e6, optional=True),
    Param("trials", "int", 12, "search budget: trials (finished or stopped) in all, resumed ones included",
          low=0, high=10000),
    Param("minutes", "float", None, "search budget in wall time; no new trial starts after it", low=0.0,
          high=1e6, optional=True),
    Param("space", "list", list(DEFAULT_SPACE), f"the candidates searched: {', '.join(CANDIDATES)} (prune, blocks "
          "and lowrank: the cuts of prune_int8, blocks_int8 and lowrank_int8 without INT8, FP32; not searched by "
          "default; with device cuda every INT8 candidate is searched as its FP32 cut and quantize_int8 is left out)"),
    Param("finetune_epochs", "int", 1, "the short fine-tune each trial gets (a student's training epochs)",
          low=1, high=1000),
    Param("prune_margin_pt", "float", 3.0, "stop a trial whose fine-tune ends more than this many points beyond "
          "the limit, before INT8, export and timing", low=0.0, high=100.0),
    Param("seed", "int", 0, "the sampler's seed", low=0, high=2**31 - 1),
    Param("parallel", "int", 1, "trials run at once, each in a process of its own (a Ray task under "
          "SLIMBENCH_BACKEND=ray), the cores split between them; with objective latency the scored trials are "
          "timed again one at a time after the search, against the start", low=1, high=64),
    Param("runtime", "str", "eager", "objective latency: the runtime each model is timed in, the start in the same "
          "one: eager (PyTorch), onnxruntime, openvino, or best (the fastest here, per model, as Compare's "
          "'latency, best runtime'); an INT8 trial runs in ONNX Runtime and OpenVINO (under best: each here, against "
          "the start in each; under eager: its format's own)", choices=search_latency.RUNTIMES),
    Param("batch", "int", 1, "objective latency: the batch each model is timed at", low=1, high=4096),
    Param("int8_format", "str", "auto", "the INT8 step's format in every candidate that ends in INT8: auto "
          "(quantize_int8's own choice: the fastest format on this CPU whose answers agree with the FP32 model's, "
          "trying the next, then keeping layers FP32, where one falls short: minutes on a barely trained model) or "
          "one format", choices=("auto", *int8_formats.FORMATS)),
    Param("int8_calibration_batches", "int", None, "the INT8 step's calibration batches (blank: quantize_int8's "
          "default, 8 training batches: 4,096 images at batch 512, whose every activation ONNX Runtime's percentile "
          "calibration holds in memory at once)", low=1, high=10000, optional=True),
    Param("device", "str", "cpu", "objective latency: where every model is timed: cpu, or cuda (this machine's GPU: "
          "runtime eager (PyTorch on CUDA), onnxruntime (its CUDA provider) or best of the two; INT8 is left out "
          "there, since ONNX Runtime's CUDA provider does not speed INT8 up: each INT8 candidate is searched as its "
          "FP32 cut, quantize_int8 not at all; refused where this machine has no CUDA device)", choices=DEVICES),
    Param("promote", "int", 2, "cheap proxies first: after the short-fine-tune trials, this many of those on or "
          "nearest the Pareto front are run again with the full recipe (full_epochs, KD-assisted where the method "
          "has a distillation-assisted fine-tune); they count in the trials budget and start only within the "
          f"time budget, whose last {1 - PROXY_SHARE:.0%} is kept for them; 0: no promotion", low=0, high=1000),
    Param("full_epochs", "int", 3, "the full recipe's fine-tune epochs (a student's training epochs) for a "
          "promoted or seeded trial", low=1, high=1000),
    Param("seeded", "bool", True, "run the recipes measured to work first, with the full recipe's fine-tune "
          "(full_epochs, or the epochs the recipe names), right after the start as INT8: " + "; ".join(
              s.why + ("" if set(OBJECTIVES) <= set(s.objectives) else f" (objective {', '.join(s.objectives)} only)")
              for s in SEEDS) + " (a candidate "
          "left out of space is not seeded); they count in the trials budget. false: only what the sampler draws"),
], help="Search methods and pipelines (structured pruning -> INT8, low-rank -> INT8, INT8, unstructured pruning, "
        "distillation) with Optuna for the smallest / fastest model within an accuracy limit on the validation "
        "split; each trial is a linked child run, the winner is this run's model.")
def autocompress(model, ctx, params):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = _record(ctx, ctx.spec.model.from_run)   # its size, MACs and latency: what trials compare with
    key = OBJECTIVES[params["objective"]]
    if key != "latency_ms" and not start.get(key):
        raise SpecError("method.params.objective", f"the start run has no {key} to compare with")
    base_val = ctx.evaluate(ctx.base_copy(), "val")["accuracy"]
    limit, target = params["max_drop_pt"], params["target"]
    ctx.log.info("autocompress: start val accuracy %s, limit %.2f pt, objective %s%s", percent(base_val), limit, key,
                 f" <= 1/{target:g} of the start's" if target else "")
    device = params["device"] if key == "latency_ms" else "cpu"
    space, changed = for_device(params["space"], device)
    for c, why in changed.items():
        ctx.log.info("autocompress: %s %s", c, why)

    storage = JournalStorage(JournalFileBackend(str(ctx.run_dir / JOURNAL)))
    pruner = optuna.pruners.ThresholdPruner(lower=base_val - (limit + params["prune_margin_pt"]) / 100)
    study = optuna.create_study(study_name=STUDY, storage=storage, pruner=pruner,
                                direction="maximize" if target else "minimize", load_if_exists=True)
    # Seeded past the trials it already has: a resumed search does not redraw its first recipes.
    study.sampler = optuna.samplers.TPESampler(seed=params["seed"] + len(study.trials),
                                               constant_liar=params["parallel"] > 1)
    if not study.trials and "quantize_int8" in space:
        # The cheapest honest win first: the start as INT8 (no knob, no training), a point every front should beat.
        study.enqueue_trial({"candidate": "quantize_int8"})
    _fail_interrupted(ctx, study)
    if params["seeded"]:
        # Then the recipes measured to work, with their full fine-tune: measured within the budget, not left to
        # a 1-epoch proxy surviving the kill and a promotion. A resumed search queues one again only where no trial
        # of it finished, waits, or was adopted (an interrupted one whose run had not finished failed).
        for seed in seeds_for(params["objective"], space):
            if not any(
                    "seeded" in t.user_attrs and t.state != optuna.trial.TrialState.FAIL
                    and (t.params or t.system_attrs.get("fixed_params")) == seed.params   # a waiting one: fixed
                    for t in study.get_trials(deepcopy=False)):
                study.enqueue_trial(dict(seed.params), user_attrs={"seeded": seed.why, **(
                    {"seed_epochs": seed.epochs} if seed.epochs else {})})
    done = _finished(study)
    left = params["trials"] - len(done)
    used = float(study.user_attrs.get("seconds_used", 0.0))
    timeout = None if params["minutes"] is None else max(0.0, params["minutes"] * 60 - used)
    ctx.log.info("autocompress: %d trial(s) finished before, %d left", len(done), max(left, 0))

    judge = search_latency.LatencyJudge(ctx, params["runtime"], params["batch"], device) \
        if key == "latency_ms" else None
    if judge is not None:
        ctx.log.info("autocompress: latency at batch %d in %s on %s (the start: %s)", params["batch"],
                     params["runtime"], search_latency.device_name(device), judge.label(judge.start_runtime))
    shape, small = ctx.input_shape, ctx.small_input
    start_params = sum(p.numel() for p in ctx.base.parameters())

    def prepare(trial: Any) -> Any:
        """The trial's Draw to run; or, decided without a run, its value (a repeat) or TrialPruned."""
        candidate = trial.suggest_categorical("candidate", list(space))
        source = trial.user_attrs.get("promoted_from")   # a promoted trial: the full recipe of a proxy trial's draw
        seeded = trial.user_attrs.get("seeded")           # a seeded trial: a measured recipe, its full fine-tune
        full = source is not None or seeded is not None
        epochs = trial.user_attrs.get("seed_epochs") or (params["full_epochs"] if full else params["finetune_epochs"])
        d = draw(trial, candidate, epochs,
                 start["macs"], start_params, ctx.data.num_classes, shape, small,
                 kd=FULL_KD if source is not None else 0.0, int8_format=params["int8_format"],
                 int8_batches=params["int8_calibration_batches"])
        if source is not None:
            d = Draw(d.method, f"{d.recipe} (full recipe of trial {source})", d.proxy)
        elif seeded is not None:
            d = Draw(d.method, f"{d.recipe} (seeded: a measured recipe)", d.proxy)
        trial.set_user_attr("recipe", d.recipe)
        trial.set_user_attr("method", d.method)
        repeat = _same_recipe(study, trial)
        if repeat is not None:   # TPE drew a recipe a finished trial ran: reuse it, never run it twice
            for k, v in repeat.user_attrs.items():
                trial.set_user_attr(k, v)
            trial.set_user_attr("repeat_of", repeat.number)
            if repeat.state == optuna.trial.TrialState.PRUNED:
                raise optuna.TrialPruned(repeat.user_attrs.get("why", "as the trial it repeats"))
            _constrain(trial, limit, target)
            return repeat.value
        bound = _proxy_refusal(d.proxy, params["objective"], target)
        if bound:
            trial.set_user_attr("why", bound)
            trial.set_user_attr("proxy", d.proxy)
            raise optuna.TrialPruned(bound)
        return d

    def objective(trial: Any) -> float:
        d = prepare(trial)
        return d if not isinstance(d, Draw) else _run_trial(ctx, trial, d, base_val, limit, key, start.get(key),
                                                            target, judge)

    t0 = time.monotonic()

    def spent(study: Any = study, _trial: Any = None) -> None:   # after every trial: a killed search keeps its clock
        study.set_user_attr("seconds_used", used + time.monotonic() - t0)
    parallel, where = params["parallel"], child_runs.where()
    concurrent = parallel > 1 or where == "ray"
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)

    def run_phase(budget: int, n: int, seconds: float | None) -> None:
        """Up to ``n`` trials, no more than ``budget`` finished in all, none started after ``seconds``."""
        if n <= 0 or (seconds is not None and seconds <= 0):
            return
        if not concurrent:
            study.optimize(objective, n_trials=n, timeout=seconds, catch=(JobFailed,),
                           callbacks=[optuna.study.MaxTrialsCallback(budget, states=counted), spent])
        else:
            parallel_trials.run(
                ctx, study, parallel=parallel, threads=parallel_trials.threads_per_trial(parallel, where),
                budget=budget, left=n, timeout=seconds, prepare=prepare,
                spec_of=lambda trial, d: _child_spec(ctx, trial, d),
                score=lambda trial, record: _score(ctx, trial, record, base_val, limit, key, start.get(key), target,
                                                   judge),
                describe_stop=lambda val: _stop_why(val, base_val, limit), spent=spent)

    # Cheap proxies first: short-fine-tune trials, then the few on or near their front get the full recipe.
    promote = min(params["promote"], max(0, params["trials"] - 1))
    proxy_budget = params["trials"] - promote
    promoted_done = sum("promoted_from" in t.user_attrs for t in done)
    proxy_left = 0 if promoted_done else proxy_budget - (len(done) - promoted_done)
    proxy_seconds = None if timeout is None else \
        (timeout if not promote else params["minutes"] * 60 * PROXY_SHARE - used)
    try:   # the judge's exported models go with it, however the search ends
        try:
            t_phase = time.monotonic()
            run_phase(proxy_budget, proxy_left, proxy_seconds)
            chosen = _promotions(study, promote, limit + params["prune_margin_pt"], target)
            for t in chosen:
                study.enqueue_trial(t.params, user_attrs={"promoted_from": t.number})
            if chosen:
                ctx.log.info("autocompress: full recipe for trial(s) %s", ", ".join(str(t.number) for t in chosen))
            left_now = params["trials"] - len(_finished(study))
            rest = None if timeout is None else timeout - (time.monotonic() - t_phase)
            run_phase(params["trials"], min(left_now, len(chosen) + _waiting(study)), rest)
            # Budget the promotions did not use (fewer trials qualified, or they ended early): more proxy trials.
            left_now = params["trials"] - len(_finished(study))
            rest = None if timeout is None else timeout - (time.monotonic() - t_phase)
            run_phase(params["trials"], left_now, rest)
        finally:
            spent(study)
        timing = _timing_note(key, parallel, where, params, changed)
        return _conclude(ctx, study, model, base_val, limit, target, params, where, timing,
                         judge=judge, retime=concurrent and judge is not None)
    finally:
        if judge is not None:
            judge.close()


def _waiting(study: Any) -> int:
    from optuna.trial import TrialState
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _promotions(study: Any, n: int, within_pt: float, target: float | None) -> list[Any]:
    """The ``n`` proxy trials that get the full recipe: scored, with a fine-tune to lengthen, not past the limit
    by more than the margin (nor, with a target, over its budget), not promoted already; the front first, then
    the next front (non-dominated sorting on validation accuracy and cost), cheapest first within each."""
    from optuna.trial import TrialState
    taken = {t.user_attrs["promoted_from"] for t in study.get_trials(deepcopy=False)
             if "promoted_from" in t.user_attrs and t.state != TrialState.FAIL}
    pool = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "promoted_from" not in t.user_attrs and "repeat_of" not in t.user_attrs and t.number not in taken
            and "seeded" not in t.user_attrs   # a seeded trial ran its full recipe already
            and t.params.get("candidate") in TUNED and t.user_attrs.get("drop_pt", math.inf) <= within_pt
            and (not target or t.user_attrs.get("cost_ratio", math.inf) <= TARGET_SLACK / target)]
    out: list[Any] = []
    n -= len(taken)   # a resumed search: those promoted before count
    while pool and len(out) < n:
        layer = [t for t in pool if not any(
            o.user_attrs["val_accuracy"] >= t.user_attrs["val_accuracy"] and o.user_attrs["cost_ratio"]
            <= t.user_attrs["cost_ratio"] and (o.user_attrs["val_accuracy"] > t.user_attrs["val_accuracy"]
                                               or o.user_attrs["cost_ratio"] < t.user_attrs["cost_ratio"])
            for o in pool)]
        out += sorted(layer, key=lambda t: t.user_attrs["cost_ratio"])[:n - len(out)]
        pool = [t for t in pool if t not in layer]
    return out


def _constrain(trial: Any, limit: float, target: float | None) -> None:
    """The limit (and target) as Optuna constraints (<= 0: met), which the TPE sampler steers by."""
    trial.set_constraint("drop_over_limit_pt", trial.user_attrs["drop_pt"] - limit)
    if target:
        trial.set_constraint("cost_over_target", trial.user_attrs["cost_ratio"] - 1 / target)


def _fail_interrupted(ctx, study: Any) -> None:
    """A trial still RUNNING in the journal belonged to a search process that died: mark it failed. Where
    its child run had finished, the same recipe is queued with that run to adopt: scored, not run again;
    where its run still shows running (it died with the search, or is an orphan yet to notice), it is
    asked to stop and ended cancelled, with why."""
    from optuna.trial import TrialState
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "why", "interrupted: the search process stopped while it ran")
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        child = t.user_attrs.get("run_id")
        row = ctx.store.get(child) if child else None
        if row is not None and row["state"] == "done":
            study.enqueue_trial(t.params, user_attrs={"adopt_run": child, **{
                k: t.user_attrs[k] for k in ("promoted_from", "seeded") if k in t.user_attrs}})
        elif row is not None and row["state"] == "running":   # died with the search, or an orphan not yet stopped
            ctx.store.request_cancel(child, "")
            ctx.store.end_without_result(child, "cancelled", "interrupted: its search stopped while it ran; the "
                                         "resumed search does not adopt an unfinished trial")


def _finished(study: Any) -> list[Any]:
    from optuna.trial import TrialState
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def _same_recipe(study: Any, trial: Any) -> Any:
    """A finished trial that ran ``trial``'s recipe: the same draw at the same stage (proxy, full recipe of a
    proxy, or seeded)."""
    def stage(attrs: dict) -> str:
        return "promoted" if "promoted_from" in attrs else "seeded" if "seeded" in attrs else "proxy"
    return next((t for t in _finished(study) if t.params == trial.params and "repeat_of" not in t.user_attrs
                 and stage(t.user_attrs) == stage(trial.user_attrs)), None)


def _proxy_refusal(proxy: dict[str, float], objective: str, target: float | None) -> str:
    """Why a trial cannot meet the target, from what its recipe says before training ('' = it may)."""
    share = proxy.get(objective)
    if target is None or share is None or share <= TARGET_SLACK / target:
        return ""
    return (f"refused before training: its {objective} would be {share:.1%} of the start's, over the target "
            f"1/{target:g} = {1 / target:.1%}")


def _child_spec(ctx, trial: Any, d: Any) -> dict[str, Any]:
    spec = ctx.spec.to_dict()
    spec["method"] = d.method
    spec["name"] = f"{ctx.spec.name or 'autocompress'} · trial {trial.number}: {d.recipe}"
    return spec


def _stop_why(val_acc: float, base_val: float, limit: float) -> str:
    drop = 100 * (base_val - val_acc)
    return (f"stopped after its fine-tune: validation accuracy {percent(val_acc)}, {drop:.2f} pt below the start's, "
            f"past the {limit:g} pt limit by more than the margin")


def _run_trial(ctx, trial: Any, d: Any, base_val: float, limit: float, key: str, start_cost: float | None,
               target: float | None, judge: Any = None) -> float:
    import optuna
    spec = _child_spec(ctx, trial, d)
    stop: list[str] = []
    steps = [0]

    def echo(**ev: Any) -> None:
        ctx.progress(**{**ev, "phase": f"trial {trial.number}: {ev.get('phase', '')}"})
        if ev.get("phase", "").endswith(":val") and ev.get("epoch") == ev.get("epochs") and "val_acc" in ev:
            steps[0] += 1
            trial.report(ev["val_acc"], steps[0])
            if trial.should_prune() and not stop:
                stop.append(_stop_why(ev["val_acc"], base_val, limit))

    adopt = trial.user_attrs.get("adopt_run")   # an interrupted trial's finished run (see _fail_interrupted)
    child = adopt or new_run_id()
    trial.set_user_attr("run_id", child)
    try:
        record = _record(ctx, adopt) if adopt else ctx.run_child(spec, run_id=child, echo=echo,
                                                                 stop=lambda: bool(stop))
    except Cancelled:
        if not stop:            # the search itself was cancelled
            raise
        trial.set_user_attr("why", stop[0])
        raise optuna.TrialPruned(stop[0]) from None
    except JobFailed as e:
        trial.set_user_attr("why", f"failed: {e}")
        raise
    return _score(ctx, trial, record, base_val, limit, key, start_cost, target, judge)


def _score(ctx, trial: Any, record: dict[str, Any], base_val: float, limit: float, key: str,
           start_cost: float | None, target: float | None, judge: Any = None) -> float:
    """A finished child's figures on the trial (validation accuracy, drop, cost) and its objective value;
    with ``judge`` (objective latency) its model timed now, in the chosen runtime, against the start."""
    val = val_accuracy(ctx, record)
    trial.set_user_attr("val_accuracy", val)
    trial.set_user_attr("drop_pt", 100 * (base_val - val))
    if judge is not None:
        for k, v in _timed_attrs(judge.time(_load_model(ctx, trial.user_attrs["run_id"]))).items():
            trial.set_user_attr(k, v)
    else:
        cost = record.get(key)
        trial.set_user_attr("cost", cost)
        trial.set_user_attr("cost_ratio", cost / start_cost if cost and start_cost else math.inf)
    _constrain(trial, limit, target)
    return val if target else trial.user_attrs["cost_ratio"]


def _timed_attrs(timed: dict[str, Any]) -> dict[str, Any]:
    """A trial's latency figures as the trial list keeps them: the speed-up paired against the start in the
    runtime it ran fastest in (``start_runtime``: the start's side of that pair), and the runtimes refused."""
    return {"cost": timed["latency_ms"], "cost_ratio": 1 / timed["speedup"], "runtime": timed["runtime"],
            "start_runtime": timed["start_runtime"], "start_latency_ms": timed["start_latency_ms"],
            "runtime_agreement": timed["agreement"],
            "runtimes_refused": {n: r["why"] for n, r in timed["refused"].items()}}


def val_accuracy(ctx, record: dict[str, Any]) -> float:
    """Top-1 of a finished child's model on the search's VALIDATION split (never the test split)."""
    bundle = export.read_bundle(record["checkpoint"])
    if bundle.get("kind") == export.ONNX_INT8:   # its ONNX model, with the FP32 model it was made from
        model = Int8Model.from_bundle(bundle, _int8_source(ctx, record), ctx, fp32_is_start=False)
        logits, ys = training.predict(model, ctx.data.loader("val", model.device), model.device, ctx.cancelled)
        return float((logits.argmax(1) == ys).float().mean())
    return float(ctx.evaluate(export.model_from_bundle(bundle, trust_code=True), "val")["accuracy"])


def _int8_source(ctx, record: dict[str, Any]):
    """The FP32 model an INT8 trial was quantised from: a pipeline's step before INT8, else the search's start."""
    steps = record.get("pipeline_runs") or []
    fp32 = ctx.load_run(steps[-2], "method")[0] if len(steps) >= 2 else ctx.base_copy()
    return fp32.to("cpu").eval()


def _summary(t: Any) -> dict[str, Any]:
    a = t.user_attrs
    return {"trial": t.number, "state": t.state.name.lower(), "recipe": a.get("recipe"), "params": t.params,
            "run_id": a.get("run_id"),
            "val_accuracy": a.get("val_accuracy"), "drop_pt": a.get("drop_pt"), "cost": a.get("cost"),
            "cost_ratio": a.get("cost_ratio"), "runtime": a.get("runtime"), "why": a.get("why"),
            "repeat_of": a.get("repeat_of"), "promoted_from": a.get("promoted_from"), "seeded": a.get("seeded"),
            **{k: a[k] for k in LATENCY_ATTRS if k in a}}


def pareto(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scored trials no other scored trial beats on both validation accuracy and cost, cheapest first."""
    scored = [t for t in trials if t["val_accuracy"] is not None and t.get("repeat_of") is None]

    def beaten(t: dict[str, Any]) -> bool:
        return any(o["val_accuracy"] >= t["val_accuracy"] and o["cost_ratio"] <= t["cost_ratio"]
                   and (o["val_accuracy"] > t["val_accuracy"] or o["cost_ratio"] < t["cost_ratio"]) for o in scored)
    return sorted((t for t in scored if not beaten(t)), key=lambda t: t["cost_ratio"])


def select(trials: list[dict[str, Any]], limit: float, target: float | None) -> tuple[dict | None, list[dict]]:
    """(winner, closest): the winner meets the limit (and target) on VALIDATION figures only; without one,
    the three scored trials that came closest, each with what bound it."""
    scored = [t for t in trials if t["val_accuracy"] is not None and t.get("repeat_of") is None]

    def misses(t: dict[str, Any]) -> list[str]:
        out = []
        if t["drop_pt"] > limit:
            out.append(f"accuracy: lost {t['drop_pt']:.2f} pt on validation, over the {limit:g} pt limit")
        if target and t["cost_ratio"] > 1 / target:
            out.append(f"budget: {1 / t['cost_ratio']:.2f}x below the start, short of {target:g}x")
        return out

    ok = [t for t in scored if not misses(t)]
    if ok:
        key = (lambda t: (-t["val_accuracy"], t["cost_ratio"])) if target else \
              (lambda t: (t["cost_ratio"], -t["val_accuracy"]))
        return min(ok, key=key), []

    def distance(t: dict[str, Any]) -> float:   # points over the limit plus the budget's shortfall in %
        over = max(0.0, t["drop_pt"] - limit)
        short = max(0.0, t["cost_ratio"] * target - 1) * 100 if target else 0.0
        return over + short
    closest = [{**t, "bound_by": "; ".join(misses(t))} for t in sorted(scored, key=distance)]
    unscored = [{**t, "bound_by": t["why"]} for t in trials if t not in scored and t["why"]]
    return None, (closest + unscored)[:3]


def _timing_note(key: str, parallel: int, where: str, params: dict, changed: dict[str, str] | None = None
                 ) -> str | None:
    if key != "latency_ms":
        return None
    device = params.get("device", "cpu")
    gpu = device != "cpu"
    how = (f"on {search_latency.device_name(device)}, at batch {params['batch']} in {params['runtime']}"
           + (" (PyTorch eager on CUDA or ONNX Runtime's CUDA provider with I/O binding; inputs made on the GPU, every "
              "call synchronised)" if gpu else "")
           + (" (each model in the runtime where it runs fastest here, an FP32 runtime only where its top-1 "
              f"agreed with eager on >= {search_latency.AGREEMENT_MIN:.0%} of {search_latency.AGREEMENT_IMAGES} "
              "validation images)" if params["runtime"] == "best" else "")
           + ", interleaved with the start exported to that same runtime (measure.paired_speedup: median of "
           "per-round ratios), under best chained to the start in its own fastest runtime; cost_ratio is 1 / that "
           "speed-up"
           + ("".join(f"; {c}: {why}" for c, why in (changed or {}).items()) if gpu else ""))
    if parallel == 1 and where == "local":
        return f"each trial timed as it ended, one trial at a time (no other trial of this search ran meanwhile), {how}"
    return (f"trials ran {parallel} at a time ({where}), so a trial may have been timed while another trained: "
            f"after the search every scored trial was timed again here, alone, {how}; latency_during_search_ms "
            "is the figure taken during the search")


def _retime(ctx, trials: list[dict[str, Any]], judge: Any) -> None:
    """Each scored trial timed again in this process with no trial running, in the search's runtime and at its
    batch, against the start (ABBA rounds)."""
    for t in trials:
        if t["val_accuracy"] is None or t.get("repeat_of") is not None:
            continue
        during = t["cost"]
        t.update(_timed_attrs(judge.time(_load_model(ctx, t["run_id"]))), latency_during_search_ms=during,
                 retimed=True)
    for t in trials:   # a repeat carries its original's figures
        orig = next((o for o in trials if o["trial"] == t.get("repeat_of")), None)
        if orig is not None and orig.get("retimed"):
            t.update({k: orig[k] for k in ("latency_during_search_ms", "cost", "cost_ratio", "runtime", "retimed",
                                           *LATENCY_ATTRS) if k in orig})


def _conclude(ctx, study: Any, model, base_val: float, limit: float, target: float | None, params: dict,
              where: str, timing: str | None, judge: Any, retime: bool):
    trials = [_summary(t) for t in study.get_trials(deepcopy=False)]
    if retime:
        _retime(ctx, trials, judge)
    winner, closest = select(trials, limit, target)
    # Only now, the search over, is the test split read: for the front's runs (the winner is among them).
    front = [{**t, "test_accuracy": _test_accuracy(ctx, t["run_id"])} for t in pareto(trials)]
    stopped = [t for t in trials if t["state"] in ("pruned", "fail")]
    ctx.extra.update({
        "search_trials": sum(t["state"] in ("complete", "pruned") for t in trials),
        "search_killed": len(stopped),
        "search_trial_list": trials,
        "search_front": front,
        "search_start_val_accuracy": base_val,
        "search_winner": winner["run_id"] if winner else None,
        "search_parallel": params["parallel"],
        "search_where": where,
        "search_timing": timing,
        "search_latency_runtime": params["runtime"] if judge is not None else None,
        "search_latency_batch": params["batch"] if judge is not None else None,
        "search_start_runtime": judge.label(judge.start_runtime) if judge is not None else None,
        "search_latency_device": search_latency.device_name(judge.device) if judge is not None else None,
        "search_runtime_agreement": None if judge is None else {
            judge.label(n): {"agreement": a, **({"refused": judge.start_refused[n]["why"]}
                                                 if n in judge.start_refused else {})}
            for n, a in judge.agreement.items()},
    })
    what = f"{params['objective']}" + (f" at most 1/{target:g} of the start's" if target else " minimised")
    if winner is None:
        near = "; ".join(f"trial {t['trial']} ({t['recipe']}): {t['bound_by']}" for t in closest) or "none ran"
        ctx.extra["search_why"] = (f"no trial met the limit ({limit:g} pt on validation, {what}); closest: {near}. "
                                   "The search's model is its start, unchanged")
        ctx.extra["search_closest"] = closest
        ctx.log.warning("autocompress: %s", ctx.extra["search_why"])
        return model
    ctx.extra["search_why"] = (f"trial {winner['trial']}: {winner['recipe']}; validation accuracy "
                               f"{percent(winner['val_accuracy'])} against the start's {percent(base_val)}: "
                               f"{change(winner['drop_pt'])} (limit: {limit:g} pt lost), {params['objective']} "
                               f"{winner['cost_ratio']:.3f}x the start's ({what}). Chosen on the validation split; "
                               "only the final Pareto front was scored on the test split")
    return _load_winner(ctx, winner["run_id"])


def _record(ctx, run_id: str) -> dict[str, Any]:
    row = ctx.store.get(run_id)
    rec = row["record"] if row else None
    return json.loads(rec) if isinstance(rec, str) else (rec or {})


def _test_accuracy(ctx, run_id: str) -> float | None:
    return _record(ctx, run_id).get("accuracy")


def _load_winner(ctx, run_id: str):
    bundle = export.read_bundle(Path(ctx.store.run_dir(run_id)) / layout.CHECKPOINT)
    ctx.set_arch(bundle["arch"], bool(bundle["arch_kwargs"]["small_input"]))
    return _load_model(ctx, run_id, bundle)


def _load_model(ctx, run_id: str, bundle: dict | None = None):
    """A trial run's model as it runs: its INT8 ONNX Runtime model, or its PyTorch model, on the CPU."""
    bundle = bundle or export.read_bundle(Path(ctx.store.run_dir(run_id)) / layout.CHECKPOINT)
    if bundle.get("kind") == export.ONNX_INT8:
        return Int8Model.from_bundle(bundle, _int8_source(ctx, _record(ctx, run_id)), ctx, fp32_is_start=False)
    return export.model_from_bundle(bundle, trust_code=True).to(torch.device("cpu"))
