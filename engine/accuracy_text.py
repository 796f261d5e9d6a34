"""Accuracy and accuracy differences as a search's sentences and page write them: an accuracy in percent
("88.57 %"), a difference in points ("0.43 pt"), and a change that rounds to nothing read as kept, never
"lost 0.00 pt" or "gained 0.00 pt". Formatted here once, so that the record's sentences and the page agree."""
from __future__ import annotations

from typing import Any

KEPT_BELOW_PT = 0.005   # a change smaller than this shows as 0.00 pt at two decimals: no change to speak of


def percent(acc: Any) -> str:
    """A top-1 fraction as the page writes it: 0.88573 -> "88.57 %"; "—" when not measured."""
    return "—" if not isinstance(acc, (int, float)) else f"{100 * acc:.2f} %"


def points(delta_pt: float | None) -> float | None:
    """A difference in points rounded as shown (2 decimals), a rounding to -0.00 read as 0.00."""
    return None if delta_pt is None else round(delta_pt, 2) + 0.0


def change(drop_pt: float) -> str:
    """The change against the start, from ``drop_pt`` (points lost; negative: gained), in words with the signed
    difference: "lost 0.43 pt (Δ -0.43 pt)", "gained 0.12 pt (Δ +0.12 pt)", "kept the start's accuracy
    (Δ 0.00 pt)" when less than ``KEPT_BELOW_PT`` either way."""
    if abs(drop_pt) < KEPT_BELOW_PT or points(abs(drop_pt)) == 0:
        return "kept the start's accuracy (Δ 0.00 pt)"
    delta = points(-drop_pt)
    return f"{'lost' if delta < 0 else 'gained'} {abs(delta):.2f} pt (Δ {delta:+.2f} pt)"
