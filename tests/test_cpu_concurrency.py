"""Jobs at once on CPU: how many by default, each timing on its share of the threads, and concurrent jobs of
one workspace taking turns timing (engine.measure.timing_lock)."""
from __future__ import annotations

import threading
import time

import pytest

from engine import jobs, measure


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


@pytest.mark.fast
@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 1), (4, 1), (8, 2), (16, 4)])
def test_cpu_default_runs_one_job_per_four_cores_and_the_setting_overrides(monkeypatch, cores, expected):
    monkeypatch.delenv("SLIMBENCH_WORKER_CONCURRENCY", raising=False)
    monkeypatch.setattr(jobs, "gpu_count", lambda: 0)
    monkeypatch.setattr(jobs.os, "cpu_count", lambda: cores)
    assert jobs.default_concurrency() == expected
    monkeypatch.setenv("SLIMBENCH_WORKER_CONCURRENCY", "2")
    assert jobs.default_concurrency() == 2


@pytest.mark.fast
def test_a_job_times_on_its_share_of_the_threads(monkeypatch):
    monkeypatch.delenv("SLIMBENCH_JOB_THREADS", raising=False)
    alone = measure.timing_threads(None)   # all physical cores
    monkeypatch.setenv("SLIMBENCH_JOB_THREADS", "1")   # what the worker gives each of two jobs on 2 cores
    assert measure.timing_threads(None) == 1 and measure.timing_threads(3) == 3 and alone >= 1
    monkeypatch.setenv("SLIMBENCH_JOB_THREADS", "512")   # a share of logical CPUs: capped at the physical cores
    assert measure.timing_threads(None) == alone
