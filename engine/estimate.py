"""How long jobs take on this machine, from the wall times of the runs this workspace finished here.

A job's estimate is the median wall time (start to finish of its process's run) of the finished runs
on this host with the same settings (its "signature": the spec without names, labels, seed and the ids
of the runs it starts from), else of those with the same method, data and device at other settings
(said so: they may have trained longer or shorter). A job with neither has no estimate: callers say
so, and never stand in a number of their own for it.

A plan's wall time: its jobs run ``concurrency`` at a time, and a job waits for the runs it starts
from, so it takes at least its longest chain of jobs and at least the sum over the concurrency.
"""
from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import dataclass
from typing import Any, Iterable

from . import phases, procs
from .store import FINAL_STATES, Store

# A run id (as the store makes them) or a plan's reference to one of its own jobs.
RUN_REF = re.compile(r"^(PLAN-\d+|\d{8}-\d{6}-[0-9a-f]{6})$")
UNLABELLED = ("name", "experiment", "group")
_CACHE: dict[str, Any] = {}   # History.of: the last history read, with the store state it was read at


@dataclass(frozen=True)
class JobEstimate:
    seconds: float | None   # None: no finished run like it on this machine
    runs: int               # how many past runs it is the median of
    basis: str              # "same settings", "same method and data, other settings" or "none"


@dataclass(frozen=True)
class PlanEstimate:
    seconds: float | None   # wall time of the jobs that have an estimate (None: none has)
    jobs: int               # jobs in the plan
    unknown: int            # jobs with no history here (their time is not in ``seconds``)
    runs: int               # past runs the estimates come from
    similar: int            # jobs estimated from runs at other settings

    def text(self) -> str:
        """One sentence for the user, saying what the number rests on."""
        if self.seconds is None:
            return "No run like its jobs has finished on this machine yet, so there is no estimate from history."
        how = f"from {self.runs} finished run{'s' if self.runs != 1 else ''} on this machine"
        if self.similar:
            how += f" ({self.similar} of the jobs from runs of the same method and data at other settings)"
        if self.unknown:
            return (f"At least {duration(self.seconds)}, {how}; {self.unknown} of its {self.jobs} jobs have no "
                    "history here and are not counted.")
        return f"About {duration(self.seconds)}, {how}."


def duration(seconds: float) -> str:
    """"45 s", "12 min", "1 h 05 min"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def signature(spec: dict[str, Any]) -> str:
    """What makes two jobs take the same time: the spec without its labels, seed and run ids."""
    s = {k: v for k, v in spec.items() if k not in UNLABELLED}
    s["train"] = {k: v for k, v in (s.get("train") or {}).items() if k != "seed"}
    return json.dumps(_without_run_ids(s), sort_keys=True)


def kind(spec: dict[str, Any]) -> tuple:
    """Method, data and device: what a run at other settings must share to stand in for a job."""
    data = spec.get("data") or {}
    return ((spec.get("method") or {}).get("name") or "baseline", data.get("name"), data.get("image_size"),
            (spec.get("train") or {}).get("device", "cpu"), (spec.get("model") or {}).get("arch"))


def _without_run_ids(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _without_run_ids(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_without_run_ids(v) for v in o]
    return "<run>" if isinstance(o, str) and RUN_REF.match(o) else o


class History:
    """The wall times of the runs finished on this host, by signature and by kind."""

    def __init__(self, store: Store, host: str | None = None):
        host = host or procs.host()
        self.by_signature: dict[str, list[float]] = {}
        self.by_kind: dict[tuple, list[float]] = {}
        for r in store.finished_runs():
            if r.get("host") != host or not r.get("started") or not r.get("finished") or not r.get("spec"):
                continue
            wall = r["finished"] - r["started"]
            self.by_signature.setdefault(signature(r["spec"]), []).append(wall)
            self.by_kind.setdefault(kind(r["spec"]), []).append(wall)

    @classmethod
    def of(cls, store: Store) -> "History":
        """This host's history in ``store``, read again only once a run has finished since the last read
        (the dashboard asks on every refresh)."""
        key = (str(store.root), procs.host(), store.done_version())
        if _CACHE.get("key") != key:
            _CACHE.update(key=key, history=cls(store))
        return _CACHE["history"]

    def job(self, spec: dict[str, Any]) -> JobEstimate:
        same = self.by_signature.get(signature(spec))
        if same:
            return JobEstimate(statistics.median(same), len(same), "same settings")
        similar = self.by_kind.get(kind(spec))
        if similar:
            return JobEstimate(statistics.median(similar), len(similar), "same method and data, other settings")
        return JobEstimate(None, 0, "none")


def plan(specs: list[dict[str, Any]], store: Store, concurrency: int = 1, *, parents: list[int | None] | None = None,
         history: History | None = None) -> PlanEstimate:
    """Wall time of a plan on this machine. ``parents``: the index of the job each starts from (default:
    from ``model.from_run = "PLAN-i"``, job i); the specs are matched against the store's as they are
    stored (validated, defaults filled in)."""
    history = history or History.of(store)
    ests = [history.job(s) for s in specs]
    known = [e.seconds or 0.0 for e in ests]
    parents = parents if parents is not None else [plan_parent(s) for s in specs]
    return PlanEstimate(
        seconds=_wall(known, parents, concurrency) if any(e.seconds is not None for e in ests) else None,
        jobs=len(specs), unknown=sum(e.seconds is None for e in ests),
        runs=sum(e.runs for e in ests), similar=sum(e.basis.startswith("same method") for e in ests))


def plan_parent(spec: dict[str, Any]) -> int | None:
    src = (spec.get("model") or {}).get("from_run")
    return int(src.split("-")[1]) if isinstance(src, str) and src.startswith("PLAN-") else None


def _wall(seconds: list[float], parents: list[int | None], concurrency: int) -> float:
    """At least the longest chain (a job after its parent) and at least the total over the concurrency."""
    chain: list[float] = []
    for i, s in enumerate(seconds):
        p = parents[i]
        chain.append(s + (chain[p] if p is not None and p < i else 0.0))
    return max(max(chain, default=0.0), sum(seconds) / max(1, concurrency))


# -- launched plans ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Remaining:
    seconds: float | None   # time left for the jobs that can be estimated; None: none can
    done: int               # jobs that ended (any final state)
    jobs: int
    unknown: int            # unfinished jobs with neither history nor a phase ETA
    finished: bool          # every job has ended

    def text(self) -> str:
        if self.finished:
            return "its 1 job ended" if self.jobs == 1 else f"all {self.jobs} jobs ended"  # not "all 1 jobs"
        head = f"{self.done}/{self.jobs} {'job' if self.jobs == 1 else 'jobs'} ended"
        if self.seconds is None:
            return f"{head}; no estimate yet (no history here for what is left)"
        eta = f"about {duration(self.seconds)} left" if not self.unknown else \
            f"at least {duration(self.seconds)} left ({self.unknown} job(s) have no history here)"
        return f"{head}; {eta}"


def remaining(rows: Iterable[dict[str, Any]], store: Store, concurrency: int = 1,
              history: History | None = None, now: float | None = None) -> Remaining:
    """Time left for launched jobs (store rows with ``last_event``, as ``jobs.list_jobs`` gives them):
    a running job's from its history less the time it has run, or, past that or without one, its
    current phase's own ETA (and none for a phase with no count); a queued job's from its history."""
    history = history or History.of(store)
    now = time.time() if now is None else now
    rows = list(rows)
    left: list[float] = []
    unknown = done = 0
    for r in rows:
        if r["state"] in FINAL_STATES:
            done += 1
            continue
        est = history.job(r.get("spec") or {}).seconds
        ev = r.get("last_event") or {}
        if r["state"] == "running":
            elapsed = now - (r.get("started") or now)
            by_history = est - elapsed if est is not None else None
            by_phase = ev.get("eta_s") if phases.fraction("running", ev) is not None else None
            candidates = [x for x in (by_history, by_phase) if x is not None and x > 0]
            if candidates:
                left.append(max(candidates))
            else:
                unknown += 1
        elif est is not None:
            left.append(est)
        else:
            unknown += 1
    seconds = max(max(left, default=0.0), sum(left) / max(1, concurrency)) if left else None
    return Remaining(seconds, done, len(rows), unknown, bool(rows) and done == len(rows))
