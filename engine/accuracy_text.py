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


def target_digits(value: float, target: float, digits: int = 2, most: int = 6) -> int:
    """Decimals to write ``value`` and its gap to ``target`` (a floor: met at ``value >= target``) with, from
    ``digits`` up to ``most``: enough that a miss never reads as met. A value rounding to the target (0.8967 ->
    "0.90" against 0.9) or a gap rounding to nothing ("missed by 0.00") takes another decimal until neither does."""
    d = digits
    while value < target and d < most and (round(value, d) >= round(target, d) or round(target - value, d) <= 0):
        d += 1
    return d


def target_value(value: float, target: float, digits: int = 2) -> str:
    """``value`` as a target mark shows it beside ``target``: ``digits`` decimals, more where fewer would round a
    miss up to the target (0.8967 against 0.9: "0.897", never "0.90"); a miss too close to show in six decimals
    reads "< 0.900000"."""
    d = target_digits(value, target, digits)
    if value < target and round(value, d) >= round(target, d):
        return f"< {target:.{d}f}"
    return f"{value:.{d}f}"


def target_mark(value: float | None, target: float, digits: int = 2, unit: str = "") -> str:
    """"met" when ``value >= target``, else "missed by" the gap with ``unit`` ("pt", "x", ...), shown with as many
    decimals as ``target_value`` shows the value (0.8967 against 0.9: "missed by 0.003", never "missed by 0.00");
    a gap under ``10 ** -6`` reads "missed by less than 0.000001". None: "not measured"."""
    if value is None:
        return "not measured"
    if value >= target:
        return "met"
    d = target_digits(value, target, digits)
    gap = target - value
    text = f"{gap:.{d}f}" if round(gap, d) > 0 else f"less than {10 ** -d:.{d}f}"
    return f"missed by {text}{unit}"
