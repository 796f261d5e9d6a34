"""Concurrent jobs of one workspace take turns timing (engine.measure.timing_lock)."""
from __future__ import annotations

import threading
import time

import pytest

from engine import measure


@pytest.mark.fast
def test_a_second_timing_waits_for_the_first_and_none_means_no_lock(tmp_path):
    spans: list[tuple[float, float]] = []
    waits: list[float] = []

    def timed(hold: float) -> None:
        with measure.timing_lock(tmp_path) as waited:
            t0 = time.perf_counter()
            waits.append(waited)
            time.sleep(hold)
            spans.append((t0, time.perf_counter()))

    first = threading.Thread(target=timed, args=(0.3,))
    first.start()
    time.sleep(0.05)   # the first holds the lock by now
    timed(0.0)
    first.join()
    (a0, a1), (b0, b1) = sorted(spans)
    assert a1 <= b0, "the two timings overlapped"
    assert max(waits) >= 0.15   # the second waited for the first's 0.3 s
    assert (tmp_path / measure.TIMING_LOCK).exists()
    with measure.timing_lock(None) as waited:   # no workspace: nothing to share, nothing to wait for
        assert waited == 0.0
