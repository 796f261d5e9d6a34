"""Jobs' grouping of an auto-compress search with the trials it ran: which rows a search made, how far each
search has got against its trial budget, and which live trials a cancel of the search takes along.

Pure functions of the store's rows (``jobs.list_jobs``), so the page and its tests share them; which run a
search made comes from ``engine.searches.made_by_search``, as Compare groups them."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Iterable

from engine import searches

LIVE = ("queued", "running")


@dataclass
class SearchProgress:
    """One search's trials as Jobs shows them on its row."""
    trials: list[dict[str, Any]]   # the runs it made (its trials and their pipelines' steps), newest first
    ended: int                     # trials that ended (done, failed, cancelled, stopped before training ...)
    running: int                   # trials running now
    budget: int | None             # its ``trials`` parameter; None for a budget in minutes alone

    @property
    def fraction(self) -> float | None:
        if not self.budget:
            return None
        return min(1.0, self.ended / self.budget)

    def text(self) -> str:
        done = f"{self.ended}/{self.budget} trials ended" if self.budget else f"{self.ended} trial(s) ended"
        return done + (f" · {self.running} running" if self.running else "")


def trial_owner(rows: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Run id -> the search that made it, for every row some search made."""
    return searches.made_by_search(list(rows))


def progress(search: dict[str, Any], rows: list[dict[str, Any]], owner: dict[str, str]) -> SearchProgress:
    """How far ``search`` has got: its direct children are its trials (a trial's pipeline steps are listed
    with them but not counted); a finished search's record counts the trials it ran, those stopped before
    training (which made no run) included."""
    made = [r for r in rows if owner.get(r["id"]) == search["id"]]
    direct = [r for r in made if r.get("parent") == search["id"]]
    running = sum(r["state"] == "running" for r in direct)
    ended = sum(r["state"] not in LIVE for r in direct)
    counted = (search.get("record") or {}).get("search_trials")
    if isinstance(counted, int):
        ended = counted
    params = ((search.get("spec") or {}).get("method") or {}).get("params") or {}
    budget = params.get("trials", _default_budget())
    return SearchProgress(made, ended, running, budget if isinstance(budget, int) and budget > 0 else None)


@cache
def _default_budget() -> int | None:
    from engine import methods
    return next((p.default for p in methods.get(searches.METHOD).params if p.name == "trials"), None)


def with_live_trials(ids: Iterable[str], rows: list[dict[str, Any]], owner: dict[str, str]) -> list[str]:
    """``ids`` and, after each search among them, its trials still queued or running: what a cancel of a
    search acts on. (The engine stops a cancelled search's trials itself, when its process sees the request;
    flagging them too stops each at once, and ends them even where the search's process no longer polls.)"""
    ids = list(dict.fromkeys(ids))
    live = [r["id"] for r in reversed(rows) if r["state"] in LIVE and owner.get(r["id"]) in ids]
    return list(dict.fromkeys(ids + live))
