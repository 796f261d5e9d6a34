"""bench autocompress's block: the front and the presets in one table, the winner against the best preset,
and the CPU target marked met, or missed with the bound that failed."""
from __future__ import annotations

import pytest

from bench import autocompress as bench


def rec(run_id, acc, size, lat, best):
    return {"run_id": run_id, "accuracy": acc, "size_bytes": size, "latency_ms": lat, "best_latency_ms": best,
            "runtime": "eager", "best_runtime": "onnxruntime"}


def result(front_size: int, front_best: float, winner: bool = True) -> dict:
    base = rec("base", 0.90, 4000, 4.0, 2.0)
    trials = [{"trial": 0, "state": "complete", "recipe": "prune -> INT8", "run_id": "t0", "drop_pt": 0.4,
               "cost_ratio": 0.25, "why": None},
              {"trial": 1, "state": "pruned", "recipe": "distill", "run_id": "t1", "drop_pt": None,
               "why": "stopped after its fine-tune: 9 pt below"}]
    search = {"search_front": [trials[0]], "search_trial_list": trials, "search_trials": 2,
              "search_winner": "t0" if winner else None, "search_why": "no trial met the limit; closest: ...",
              "search_timing": "one at a time", "search_seconds": 90.0}
    return {"base": base, "search": search, "front_records": {"t0": rec("t0", 0.897, front_size, 1.5, front_best)},
            "presets": {"INT8": rec("p1", 0.899, 1000, 2.0, 1.5), "structured 50 %": rec("p2", 0.85, 2000, 2.0, 1.0)},
            "minutes": 2.0, "seconds": 300.0, "about": "Base: tiny."}


@pytest.mark.fast
def test_block_marks_the_target_met_and_compares_the_winner_with_the_best_preset():
    text = bench.section(result(front_size=800, front_best=0.5))
    assert "| trial 0: prune -> INT8 | search front |" in text and "| INT8 | preset |" in text
    assert "**met** by trial 0" in text
    assert "Trials stopped early: 1: trial 1 (distill): stopped after its fine-tune" in text
    # the best preset within 1 pt is INT8 (the structured one lost 5 pt on test): 1.33x faster, the winner 4x
    assert "Best preset within 1 pt (test): INT8: 4.00x smaller, 1.33x faster" in text and "as fast or faster" in text
    assert "Budget used: 1.5 of 2 min" in text and "2 trial(s) finished or stopped" in text
    assert "x faster (search, paired)" in text                     # the search's own figure: 1 / its cost ratio
    assert text.split("| trial 0: prune -> INT8 |")[1].splitlines()[0].endswith("| 4 |")


@pytest.mark.fast
def test_the_bench_searches_latency_at_batch_1_in_the_best_runtime(monkeypatch, tmp_path):
    """How the target is judged: batch 1, each model in its fastest runtime."""
    specs = []

    def fake_run_spec(spec, store):
        specs.append(spec)
        return {"run_id": f"r{len(specs)}", "accuracy": 0.9, "search_front": []}
    monkeypatch.setattr(bench, "run_spec", fake_run_spec)
    bench.run(None, minutes=1.0, base_epochs=1, limit=100, trials=2, parallel=1, dataset="digits")
    params = specs[-1]["method"]["params"]
    assert specs[-1]["method"]["name"] == "autocompress"
    assert (params["objective"], params["runtime"], params["batch"]) == ("latency", "best", 1)


@pytest.mark.fast
def test_block_says_which_bound_a_missed_target_failed():
    text = bench.section(result(front_size=2000, front_best=0.5, winner=False))
    assert "**missed**" in text and "size: 2.00x smaller < 4x" in text and "speed" not in text.split("**missed**")[1]
    assert "Winner: none. no trial met the limit" in text


@pytest.mark.fast
def test_an_int8_run_without_deployment_runs_counts_in_its_own_runtime():
    base = rec("base", 0.9, 4000, 4.0, 2.0)
    int8 = {"run_id": "q", "accuracy": 0.9, "size_bytes": 1000, "latency_ms": 0.5, "runtime": "onnxruntime-int8"}
    row = bench.figures("INT8", "preset", int8, base)
    assert row["x_faster_best"] == 4.0 and row["best_runtime"] == "onnxruntime-int8"
