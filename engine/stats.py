"""How sure an accuracy figure is, given a finite test set.

A test set of n images measures accuracy with sampling error (about ±1.9 pt at n = 1000 and 90 %),
so a compressed model "losing 0.8 pt" may have lost nothing. Because every derived job scores its
starting model on the same images, the difference is a paired one: only the images whose answer
flipped carry information, which gives much tighter intervals than two separate accuracies would.
"""
from __future__ import annotations

import math

Z95 = 1.959963984540054


def wilson(correct: int, n: int, z: float = Z95) -> list[float]:
    """95 % Wilson score interval of an accuracy of ``correct`` out of ``n`` (good at 0 % and 100 % too)."""
    if n <= 0:
        return [math.nan, math.nan]
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # exactly 0 / 1 at the ends (rounding would leave e.g. 5.6e-17 for none correct)
    return [0.0 if correct == 0 else max(0.0, centre - half), 1.0 if correct == n else min(1.0, centre + half)]


def paired_difference(to_right: int, to_wrong: int, n: int, z: float = Z95) -> dict[str, object]:
    """95 % interval of (accuracy - start accuracy) on the same ``n`` images, from the answers that
    flipped, and McNemar's exact two-sided p-value that the two models are equally accurate.

    The interval is Bonett & Price's adjusted Wald interval for paired proportions (one pseudo-count
    added to each flip count), which keeps its coverage when flips are few."""
    if n <= 0:
        return {"ci95": [math.nan, math.nan], "p": math.nan}
    right, wrong, m = (to_right + 1) / (n + 2), (to_wrong + 1) / (n + 2), n + 2
    diff = right - wrong
    half = z * math.sqrt(max(0.0, right + wrong - diff * diff) / m)
    return {"ci95": [max(-1.0, diff - half), min(1.0, diff + half)], "p": mcnemar_p(to_right, to_wrong)}


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar test: the chance of a split of the b + c flips at least this uneven
    if either direction were equally likely (binomial, p = 1/2)."""
    k = b + c
    if k == 0:
        return 1.0
    tail = sum(math.comb(k, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** k)
