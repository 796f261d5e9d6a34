"""Published compression results, shipped as data (``literature.csv``) to be drawn beside our runs.

Each row is one point of a paper's or project's own table: the method, the net and dataset in our
registry's names, the base and result top-1 (%), the MAC reduction (x; 1.0 where the method does not
cut MACs), and the source it was read from. Confidence says how directly: "read in source" or how
it was transcribed. ``../shared/literature-anchors.md`` in the project workspace has the notes.

Pruned against scratch (Liu et al., ICLR 2019, "Rethinking the Value of Network Pruning"): one pruned architecture
trained three ways, each its own row. The pruned weights fine-tuned are family "pruning", method ``STEM (fine-tuned)``;
the same architecture from random weights for the same epochs (Scratch-E) or the same compute (Scratch-B) are family
"scratch", method ``STEM (Scratch-E)`` / ``STEM (Scratch-B)``. ``scratch_pairs`` joins them; a scratch row without its
fine-tuned row is refused on load. Their difference is the published counterpart of our control verdicts.
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
    _check_scratch_rows(out)
    return tuple(out)


FINE_TUNED = " (fine-tuned)"
SCRATCH_KINDS = ("Scratch-E", "Scratch-B")


@dataclass(frozen=True)
class ScratchPair:
    """One pruned architecture: its fine-tuned point and the same net trained from scratch (by kind)."""
    stem: str
    fine_tuned: Point
    scratch: dict[str, Point]

    def gap_pt(self, kind: str) -> float:
        """Fine-tuned minus trained from scratch, in points: above 0 the pruned weights beat their control."""
        return round(self.fine_tuned.result_acc - self.scratch[kind].result_acc, 2)


def _stem(p: Point) -> tuple[str, str] | None:
    """(stem, kind) of a pruned-vs-scratch row, kind "fine-tuned" or a scratch kind; None for any other row."""
    for kind in ("fine-tuned", *SCRATCH_KINDS):
        if p.method.endswith(f" ({kind})"):
            return p.method[: -len(kind) - 3], kind
    return None


def _check_scratch_rows(pts: list[Point]) -> None:
    tuned = {p.method[: -len(FINE_TUNED)]: p for p in pts if p.family == "pruning" and p.method.endswith(FINE_TUNED)}
    for p in pts:
        if p.family != "scratch":
            continue
        stem, kind = _stem(p) or ("", "")
        f = tuned.get(stem)
        if kind not in SCRATCH_KINDS or f is None or (f.net, f.dataset, f.base_acc, f.mac_reduction) != \
                (p.net, p.dataset, p.base_acc, p.mac_reduction):
            raise ValueError(f"{TABLE.name}: scratch row {p.method!r} needs a fine-tuned row {stem + FINE_TUNED!r} "
                             "of the same net, data, base and MAC reduction")


def scratch_pairs() -> tuple[ScratchPair, ...]:
    """Every published pruned architecture that was also trained from scratch, fine-tuned row first."""
    by_stem: dict[str, dict[str, Point]] = {}
    for p in points():
        if (sk := _stem(p)) and p.family in ("pruning", "scratch"):
            by_stem.setdefault(sk[0], {})[sk[1]] = p
    return tuple(ScratchPair(stem, kinds["fine-tuned"], {k: kinds[k] for k in SCRATCH_KINDS if k in kinds})
                 for stem, kinds in by_stem.items() if "fine-tuned" in kinds and len(kinds) > 1)


# Our controllable methods -> the published pruned-vs-scratch stems nearest them. Only Liu et al.'s L1-norm filter
# pruning has all three figures in a stored source (their CIFAR-10 table and their SFP runs could not be read), so SFP
# and block pruning, which also keep a smaller net of the same family, are shown against it and say it is another method.
SCRATCH_COUNTERPART = {"prune_structured": "Liu et al. 2019: L1-norm filter pruning",
                       "soft_filter_pruning": "Liu et al. 2019: L1-norm filter pruning",
                       "prune_blocks": "Liu et al. 2019: L1-norm filter pruning"}
SAME_METHOD = {"prune_structured"}   # our uniform L1 filter cut is Li et al.'s criterion


def scratch_counterpart(method: str, macs_x: float | None = None) -> ScratchPair | None:
    """The published pruned-vs-scratch pair for our ``method`` nearest our MAC reduction; None when none applies."""
    prefix = SCRATCH_COUNTERPART.get(method)
    pairs = [q for q in scratch_pairs() if prefix and q.stem.startswith(prefix)]
    return min(pairs, key=lambda q: abs(q.fine_tuned.mac_reduction - (macs_x or 1.0))) if pairs else None


def counterpart_text(method: str, macs_x: float | None = None, cite: bool = True) -> str | None:
    """One line: the published fine-tuned vs from-scratch top-1 for ``method``'s counterpart and their differences."""
    q = scratch_counterpart(method, macs_x)
    if q is None:
        return None
    f, kinds = q.fine_tuned, list(q.scratch)
    other = "; another method, the nearest with a verified figure" if method not in SAME_METHOD else ""
    return (f"published: {q.stem.replace(':', ',', 1)} on {f.dataset} ({f.mac_reduction:g}x fewer MACs{other}): "
            f"fine-tuned {f.result_acc:.2f} vs {' / '.join(f'{k} {q.scratch[k].result_acc:.2f}' for k in kinds)} %, "
            f"pruned − scratch {' / '.join(f'{q.gap_pt(k):+.2f}' for k in kinds)} pt"
            + (f" ({f.source})" if cite else ""))


def matching(net: str, dataset: str) -> list[Point]:
    """The published points for this net on this dataset (empty when the literature has none)."""
    return [p for p in points() if p.net == net and p.dataset == dataset]


def base_gap_pt(our_base_acc: float, net: str, dataset: str) -> float | None:
    """How far our base (top-1 as a fraction) sits below the best published base for this net and
    dataset, in points; None when nothing is published. Above 1 pt a comparison is not like for like."""
    bases = [p.base_acc for p in matching(net, dataset)]
    return round(max(bases) - 100 * our_base_acc, 2) if bases else None
