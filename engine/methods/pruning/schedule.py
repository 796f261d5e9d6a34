"""Schedules: how much to prune at each step, and searches for the amount that meets a budget."""
from __future__ import annotations

import functools

from typing import Callable


def cumulative_amounts(amount: float, steps: int) -> list[float]:
    """Sparsity after each of ``steps`` prune->fine-tune rounds ending at ``amount``. Each round
    removes the same share of the weights still alive (geometric), so early rounds, when the
    network has most redundancy, are not smaller than late ones, and the last is not a cliff."""
    keep = 1.0 - amount
    return [1.0 - keep ** ((k + 1) / steps) for k in range(steps)]


GOOD_ENOUGH = 0.01  # searches stop once within 1 % of the target: each probe prunes and counts MACs


def _close(value: float, target: float) -> bool:
    return abs(value - target) <= GOOD_ENOUGH * abs(target)


def _bisect(f: Callable, a, b, target: float, integer: bool, iters: int):
    """The x in [a, b] (integers if ``integer``) with f(x) closest to ``target``, f non-increasing."""
    F = functools.cache(f)  # each probe (e.g. a MAC count of a pruned copy) is costly: evaluate once
    for _ in range(iters):
        if integer and b - a <= 1:
            break
        mid = (a + b) // 2 if integer else (a + b) / 2
        if _close(F(mid), target):
            return mid, F(mid)
        if F(mid) > target:
            a = mid
        else:
            b = mid
    best = min((a, b), key=lambda x: abs(F(x) - target))
    return best, F(best)


def bisect_decreasing(f: Callable[[float], float], lo: float, hi: float, target: float,
                      iters: int = 12) -> tuple[float, float]:
    """Find x in [lo, hi] with f(x) closest to ``target`` for f non-increasing in x; returns (x, f(x))."""
    return _bisect(f, lo, hi, target, integer=False, iters=iters)


def nearest_index(f: Callable[[int], float], n: int, target: float) -> tuple[int, float]:
    """k in [0, n] with f(k) closest to ``target``, for f non-increasing in k (binary search)."""
    return _bisect(f, 0, n, target, integer=True, iters=max(1, n).bit_length() + 1)


def largest_passing(passes: Callable[[float], bool], hi: float, iters: int) -> float:
    """The largest x in (0, hi] that ``passes`` (bisection, for a test that turns false once as x
    grows; 0 if no probe passed). Only a probed x that passed is ever returned: a noisy test may make
    the answer smaller than the true boundary, never put it outside the budget."""
    if passes(hi):
        return hi
    lo = 0.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if passes(mid):
            lo = mid
        else:
            hi = mid
    return lo
