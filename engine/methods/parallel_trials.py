"""Auto-compress trials several at a time: Optuna's ask/tell with up to ``parallel`` child runs at once.

Each child is started beside the search (``ctx.start_child``: a process of its own on this machine, or a
Ray task under ``SLIMBENCH_BACKEND=ray``), so trials share nothing but the workspace: the search reads
their validation scores from the store's progress events (Optuna's pruner judges them as in a serial
search, and a pruned child is asked to stop through the store) and their records when they end.

Same semantics as the serial search: no more trials than the budget (running ones count), no new
trial after the time budget, a recipe drawn while the same recipe runs is not run twice (recorded as
failed, with why), and the journal keeps every finished trial for a resume. The TPE sampler runs
with ``constant_liar`` so that trials started together do not all draw the same corner.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

from .. import settings
from ..errors import Cancelled
from ..store import new_run_id

POLL_S = 0.5


def threads_per_trial(parallel: int, where: str) -> int:
    """CPU threads each trial gets: the search's own share of the cores (the worker's split when it runs as a
    job, else this machine's) divided evenly; a Ray task asks for one CPU."""
    if where == "ray":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, (settings.job_threads() or cores) // parallel)


class _Running:
    def __init__(self, trial: Any, child: str, handle: Any):
        self.trial, self.child, self.handle = trial, child, handle
        self.seq, self.steps, self.stop = 0, 0, ""


def run(ctx, study: Any, *, parallel: int, threads: int, budget: int, left: int, timeout: float | None,
        prepare: Callable[[Any], Any], spec_of: Callable[[Any, Any], dict], score: Callable[[Any, dict], float],
        describe_stop: Callable[[float], str], spent: Callable[[], None]) -> None:
    """Run up to ``left`` trials, ``parallel`` at once. ``prepare(trial)``: a Draw to run, or a value (or
    TrialPruned) decided without a run; ``score(trial, record)``: the finished child's objective value."""
    import optuna
    from optuna.trial import TrialState
    counted = (TrialState.COMPLETE, TrialState.PRUNED)
    deadline = None if timeout is None else time.monotonic() + timeout
    running: dict[int, _Running] = {}
    started = 0

    def may_start() -> bool:
        finished = len(study.get_trials(deepcopy=False, states=counted))
        return (started < left and finished + len(running) < budget
                and (deadline is None or time.monotonic() < deadline))

    def fail(trial: Any, why: str) -> None:
        trial.set_user_attr("why", why)
        study.tell(trial, state=TrialState.FAIL)

    try:
        while True:
            if ctx.cancelled():
                raise Cancelled()
            while len(running) < parallel and may_start():
                trial = study.ask()
                started += 1
                try:
                    d = prepare(trial)
                except optuna.TrialPruned:
                    study.tell(trial, state=TrialState.PRUNED)
                    continue
                if not hasattr(d, "method"):          # a repeat of a finished trial: its value, no run
                    study.tell(trial, d)
                    continue
                twin = next((r.trial.number for r in running.values() if r.trial.params == trial.params), None)
                if twin is not None:
                    fail(trial, f"drew the recipe trial {twin} is running: not run twice")
                    continue
                adopt = trial.user_attrs.get("adopt_run")    # an interrupted trial's finished run
                if adopt:
                    trial.set_user_attr("run_id", adopt)
                    study.tell(trial, score(trial, ctx.store.get(adopt)["record"]))
                    continue
                child = new_run_id()
                trial.set_user_attr("run_id", child)
                running[trial.number] = _Running(trial, child,
                                                 ctx.start_child(spec_of(trial, d), run_id=child, threads=threads))
            if not running:
                break
            for number, r in list(running.items()):
                _follow(ctx, r, describe_stop)
                if r.handle.poll() is None:
                    continue
                del running[number]
                _finish(ctx, study, r, score, fail)
                spent()
            time.sleep(POLL_S)
    finally:
        for r in running.values():    # the search stopped (cancelled, or an error): so do its trials
            r.handle.kill()
            ctx.store.end_without_result(r.child, "cancelled", "the search stopped while this trial ran")
            fail(r.trial, "stopped with the search")
        spent()


def _follow(ctx, r: _Running, describe_stop: Callable[[float], str]) -> None:
    """The child's new progress: each phase's last validation score goes to the pruner, as in a serial search."""
    for ev in ctx.store.events(r.child, after=r.seq):
        r.seq = ev["seq"]
        ctx.progress(**{**{k: v for k, v in ev.items() if k not in ("seq", "ts")},
                        "phase": f"trial {r.trial.number}: {ev.get('phase', '')}"})
        if ev.get("phase", "").endswith(":val") and ev.get("epoch") == ev.get("epochs") and "val_acc" in ev:
            r.steps += 1
            r.trial.report(ev["val_acc"], r.steps)
            if not r.stop and r.trial.should_prune():
                r.stop = describe_stop(ev["val_acc"])
                ctx.store.request_cancel(r.child, r.stop)


def _finish(ctx, study: Any, r: _Running, score: Callable[[Any, dict], float], fail: Callable[[Any, str], None]):
    from optuna.trial import TrialState
    row = ctx.store.get(r.child)
    if row["state"] == "done" and not r.stop:
        study.tell(r.trial, score(r.trial, row["record"]))
    elif r.stop:
        if row["state"] == "running":
            ctx.store.end_without_result(r.child, "cancelled", r.stop)
        r.trial.set_user_attr("why", r.stop)
        study.tell(r.trial, state=TrialState.PRUNED)
    else:
        if row["state"] == "running":    # its process ended without recording an outcome
            ctx.store.end_without_result(r.child, "failed", f"the trial's process ended (exit {r.handle.poll()})")
            row = ctx.store.get(r.child)
        fail(r.trial, f"failed: {row['error'] or row['state']}")
