"""Published compression results, shipped as data (``literature.csv``) to be drawn beside our runs.

Each row is one point of a paper's or project's own table: the method, the net and dataset in our
registry's names, the base and result top-1 (%), the MAC reduction (x; 1.0 where the method does not
cut MACs), and the source it was read from. Confidence says how directly: "read in source" or how
it was transcribed. ``../shared/literature-anchors.md`` in the project workspace has the notes.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

TABLE = Path(__file__).with_name("literature.csv")


@dataclass(frozen=True)
class Point:
    method: str
    family: str
    net: str
    dataset: str
    base_acc: float
    result_acc: float
    mac_reduction: float
    setting: str
    source: str
    confidence: str

    @property
    def delta_pt(self) -> float:
        return round(self.result_acc - self.base_acc, 2)


@lru_cache(maxsize=1)
def points() -> tuple[Point, ...]:
    """Every published point, checked on load: a row without a source or with an impossible figure is
    a broken table, not a point to draw."""
    out = []
    with TABLE.open(newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            p = Point(**{**row, **{k: float(row[k]) for k in ("base_acc", "result_acc", "mac_reduction")}})
            if not p.source.strip() or not p.confidence.strip():
                raise ValueError(f"{TABLE.name} line {i}: every point must cite its source and confidence")
            if not (0 < p.base_acc <= 100 and 0 < p.result_acc <= 100 and p.mac_reduction >= 1):
                raise ValueError(f"{TABLE.name} line {i}: accuracy must be a percentage and MAC reduction >= 1")
            out.append(p)
    return tuple(out)


def matching(net: str, dataset: str) -> list[Point]:
    """The published points for this net on this dataset (empty when the literature has none)."""
    return [p for p in points() if p.net == net and p.dataset == dataset]


def base_gap_pt(our_base_acc: float, net: str, dataset: str) -> float | None:
    """How far our base (top-1 as a fraction) sits below the best published base for this net and
    dataset, in points; None when nothing is published. Above 1 pt a comparison is not like for like."""
    bases = [p.base_acc for p in matching(net, dataset)]
    return round(max(bases) - 100 * our_base_acc, 2) if bases else None
