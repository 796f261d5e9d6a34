"""An auto-compress search as its page shows it, live or finished, read from what the search writes.

A finished search's record holds its trial list, front, winner and why (``search_*`` fields). While it
runs, the same figures come from its Optuna journal (``study.journal`` in its run folder, which the
search appends to after every trial), read without writing to it. Its trials are child runs of the
search; runs on the same base that no search made are the hand-made ones its front is set against.

Also the launch side: the spec of a search started from a finished run (its data, training and timing
settings, as ``python -m engine autocompress --from-run`` builds it), checked before anything is queued.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .spec import SpecError
from .store import Store

METHOD = "autocompress"
JOURNAL = "study.journal"      # engine.methods.autocompress.JOURNAL, named here so reading it imports no torch
STUDY = "autocompress"
# objective -> the record field each trial is measured by: engine.methods.autocompress.OBJECTIVES, copied so that
# reading a search imports no torch (tests/test_search_page.py checks the two agree)
COST_KEYS = {"size": "size_bytes", "macs": "macs", "latency": "latency_ms", "energy": "energy_mj_per_image"}
COST_LABELS = {"size": "size (model.pt)", "macs": "MACs", "latency": "CPU latency",
               "energy": "CPU energy per image"}
SETTINGS_FROM_START = ("data", "train", "measure", "experiment", "group")


def cost_label(params: dict[str, Any]) -> str:
    """What a search's objective measures, as its params set it (latency: on which device, at which batch, in which
    runtime)."""
    objective = params.get("objective") or "size"
    if objective != "latency":
        return COST_LABELS[objective]
    runtime = params.get("runtime") or "eager"
    where = "each model's fastest runtime here" if runtime == "best" else runtime
    device = "GPU (cuda)" if params.get("device") == "cuda" else "CPU"
    return f"{device} latency at batch {params.get('batch') or 1} in {where}"


def is_search(row: dict[str, Any] | None) -> bool:
    return bool(row) and ((row.get("spec") or {}).get("method") or {}).get("name") == METHOD


@dataclass
class Search:
    run_id: str
    state: str                          # the search job's: queued, running, done, failed, cancelled, ...
    params: dict[str, Any]
    start_id: str | None
    start: dict[str, Any]               # the start run's record (its cost is what each ratio divides by)
    start_val: float | None             # the start's validation accuracy, once the search has scored it
    trials: list[dict[str, Any]]        # one per trial, as the record's search_trial_list
    front: list[dict[str, Any]]         # the Pareto front (validation accuracy vs cost); test_accuracy once done
    winner: str | None = None
    why: str | None = None
    closest: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    timing: str | None = None           # how latency was timed (the record's search_timing), once done

    @property
    def objective(self) -> str:
        return self.params.get("objective") or "size"

    @property
    def cost_label(self) -> str:
        return cost_label(self.params)

    @property
    def limit(self) -> float:
        return float(self.params.get("max_drop_pt", 1.0))

    @property
    def target(self) -> float | None:
        return self.params.get("target")

    @property
    def done(self) -> bool:
        return self.state == "done"

    @property
    def stopped(self) -> list[dict[str, Any]]:
        """Trials refused before training, stopped after their fine-tune, or failed, each with its why."""
        return [t for t in self.trials if t["state"] in ("pruned", "fail")]

    def best_so_far(self) -> dict[str, Any] | None:
        """The trial the search would choose if it ended now (validation figures only), or None."""
        from .methods.autocompress import select
        winner, _ = select(self.trials, self.limit, self.target)
        return winner


def load(store: Store, run_id: str) -> Search:
    """The search ``run_id`` as it stands: from its record once done, else from its journal."""
    row = store.get(run_id)
    if not is_search(row):
        raise SpecError("run", f"{run_id} is no {METHOD} run")
    spec = row["spec"] or {}
    params = {**_defaults(), **(spec.get("method") or {}).get("params", {})}
    start_id = (spec.get("model") or {}).get("from_run")
    start_row = store.get(start_id) if start_id else None
    start = (start_row or {}).get("record") or {}
    rec = row.get("record") or {}
    if row["state"] == "done" and rec.get("search_trial_list") is not None:
        return Search(run_id, row["state"], params, start_id, start, rec.get("search_start_val_accuracy"),
                      list(rec["search_trial_list"]), list(rec.get("search_front") or []), rec.get("search_winner"),
                      rec.get("search_why"), list(rec.get("search_closest") or []), row.get("error"),
                      rec.get("search_timing"))
    trials, start_val = journal_trials(store.run_dir(run_id) / JOURNAL)
    from .methods.autocompress import pareto
    return Search(run_id, row["state"], params, start_id, start, start_val, trials, pareto(trials),
                  error=row.get("error"))


def _defaults() -> dict[str, Any]:
    from . import methods
    return {p.name: p.default for p in methods.get(METHOD).params}


def journal_trials(path: Path) -> tuple[list[dict[str, Any]], float | None]:
    """(trials, the start's validation accuracy) from a running search's Optuna journal; ([], None)
    before its first trial. Read only: the journal is not created or locked here."""
    if not path.is_file() or path.stat().st_size == 0:
        return [], None
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=STUDY, storage=JournalStorage(JournalFileBackend(str(path))))
    except KeyError:   # the study is not written yet
        return [], None
    trials = [trial_row(t) for t in study.get_trials(deepcopy=False)]
    return trials, start_val_from(trials)


def trial_row(t: Any) -> dict[str, Any]:
    """One Optuna trial as the record's search_trial_list has it (a running one: state 'running')."""
    a = t.user_attrs
    return {"trial": t.number, "state": t.state.name.lower(), "recipe": a.get("recipe"), "params": t.params,
            "run_id": a.get("run_id"), "val_accuracy": a.get("val_accuracy"), "drop_pt": a.get("drop_pt"),
            "cost": a.get("cost"), "cost_ratio": a.get("cost_ratio"), "runtime": a.get("runtime"), "why": a.get("why"),
            "repeat_of": a.get("repeat_of")}


def start_val_from(trials: list[dict[str, Any]]) -> float | None:
    """The start's validation accuracy as the trials' drops imply it (a running search's journal may not
    carry it): val_accuracy + drop_pt / 100 of any scored trial."""
    for t in trials:
        if t.get("val_accuracy") is not None and t.get("drop_pt") is not None:
            return t["val_accuracy"] + t["drop_pt"] / 100
    return None


def searches_of(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if is_search(r)]


def made_by_search(rows: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Run id -> the search whose trial it is (or a step of a trial's pipeline), for every run a search
    made. ``rows``: the store's rows (finished or not): their ``parent`` column is the run that ran them
    (a trial's record names its start as parent instead, which its base-relative figures follow)."""
    parent = {r["id"]: r.get("parent") for r in rows}
    method = {r["id"]: r.get("method") for r in rows}
    out: dict[str, str] = {}
    for run_id in parent:
        seen, cur = set(), parent[run_id]
        while cur and cur not in seen:
            seen.add(cur)
            if method.get(cur) == METHOD:
                out[run_id] = cur
                break
            cur = parent.get(cur)
    return out


def hand_made(records: dict[str, dict[str, Any]], rows: list[dict[str, Any]], search: Search) -> list[dict[str, Any]]:
    """Finished runs descending from the search's start that no search made: presets and hand-set
    methods, the runs its front is drawn against. Pipeline steps are left out (the pipeline's own row
    stands for them); ``rows``: the store's rows, whose parents say which runs a search made."""
    if not search.start_id:
        return []
    by_search = made_by_search(rows)
    parent = {r["id"]: r.get("parent") for r in rows}
    steps = {s for r in records.values() for s in r.get("pipeline_runs") or [] if isinstance(s, str)}

    def descends(rid: str) -> bool:
        seen, cur = set(), parent.get(rid)
        while cur and cur not in seen:
            if cur == search.start_id:
                return True
            seen.add(cur)
            cur = parent.get(cur)
        return False
    return [r for rid, r in records.items() if rid not in by_search and rid not in steps
            and r.get("method") != METHOD and descends(rid)]


def cost_ratio(rec: dict[str, Any], start: dict[str, Any], objective: str) -> float | None:
    key = COST_KEYS[objective]
    a, b = rec.get(key), start.get(key)
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b or not math.isfinite(a):
        return None
    return a / b


# -- launch -------------------------------------------------------------------------------------
def spec_for(start_row: dict[str, Any], params: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """A search spec starting from the finished run ``start_row`` with its data, training and timing settings."""
    spec = {k: v for k, v in (start_row.get("spec") or {}).items() if k in SETTINGS_FROM_START}
    spec.update({"model": {"from_run": start_row["id"]}, "method": {"name": METHOD, "params": params},
                 "name": name or f"autocompress of {start_row.get('name') or start_row['id']}"})
    return spec


def default_start(rows: list[dict[str, Any]]) -> str | None:
    """The start a new search is offered first among ``rows`` (finished runs, newest first): the newest trained
    base (a ``baseline`` run: trained, or a model scored as given), else the newest run that is neither a search
    nor an analysis of its start. A search's model is its winner, already searched; offered, never preferred."""
    from . import methods
    from .results import ANALYSES

    def method(r: dict[str, Any]) -> str | None:
        return ((r.get("spec") or {}).get("method") or {}).get("name")

    def family(r: dict[str, Any]) -> str | None:
        m = methods.load_all().get(method(r) or "baseline")
        return m.family if m else None
    for ok in (lambda r: family(r) == "baseline",
               lambda r: method(r) != METHOD and method(r) not in ANALYSES):
        found = next((r["id"] for r in rows if ok(r)), None)
        if found:
            return found
    return rows[0]["id"] if rows else None


def check_launch(store: Store, start_id: str | None, params: dict[str, Any]) -> dict[str, Any]:
    """The checked spec of a search from ``start_id`` with ``params``; SpecError naming the field that
    stops it (the engine's own checks, then what the start run must have for the chosen objective)."""
    from .validation import check_spec
    if not start_id:
        raise SpecError("model.from_run", "pick the finished run the search starts from")
    row = store.get(start_id)
    if row is None or row["state"] != "done":
        raise SpecError("model.from_run", f"no finished run {start_id!r}")
    spec = spec_for(row, params)
    check_spec(spec)
    key = COST_KEYS.get(params.get("objective"), "")
    if not (row.get("record") or {}).get(key):
        raise SpecError("method.params.objective", f"the start run recorded no {key}, which the {params['objective']} "
                        "objective compares each trial with; pick another objective")
    return spec
