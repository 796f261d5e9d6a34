"""``python -m bench autocompress --gpu``: the GPU block's text (targets met or missed by how much, presets run or
said not run), its refusal without CUDA, and its CPU rehearsal: the same path end to end on tiny settings, writing
a scratch file and never docs/BENCHMARKS.md."""
from __future__ import annotations

import pytest

from bench import autocompress as bench_cpu
from bench import autocompress_gpu as bench
from bench import report


def _trial(n, run_id, recipe, drop, ratio, **kw):
    return {"trial": n, "state": "complete", "recipe": recipe, "run_id": run_id, "drop_pt": drop, "cost_ratio": ratio,
            "why": None, **kw}


def _result(size_winner=True, speed_winner=True, presets=True):
    base = {"run_id": "b", "accuracy": 0.94, "size_bytes": 45_000_000, "checkpoint": "b.pt"}
    size_front = [_trial(0, "s0", "prune 48% -> INT8", 0.6, 0.12)]
    speed_front = [_trial(0, "g0", "blocks 31% (FP32, no INT8)", 0.4, 0.5, runtime="onnxruntime_cuda", cost=0.5,
                          start_latency_ms=1.0)]
    fronts = {"s0": {"accuracy": 0.935, "size_bytes": 5_300_000}, "g0": {"accuracy": 0.936, "size_bytes": 20_000_000}}
    closest = [{"trial": 1, "recipe": "prune 35% -> INT8", "bound_by": "accuracy: lost 1.40 pt on validation, over "
                "the 1 pt limit"}]
    size = {"search_front": size_front, "search_trial_list": size_front, "search_trials": 1, "search_killed": 0,
            "search_winner": "s0" if size_winner else None, "search_closest": [] if size_winner else closest,
            "search_seconds": 150.0}
    speed = {"search_front": speed_front, "search_trial_list": speed_front, "search_trials": 1, "search_killed": 0,
             "search_winner": "g0" if speed_winner else None, "search_closest": [] if speed_winner else closest,
             "search_seconds": 180.0, "search_timing": "each trial timed as it ended ... on cuda (NVIDIA H200)",
             "search_start_runtime": "onnxruntime_cuda"}
    done = {bench.FP32_PRESET: {"accuracy": 0.935, "size_bytes": 21_000_000},
            "INT8": {"accuracy": 0.939, "size_bytes": 11_500_000}} if presets else {}
    skipped = {} if presets else {label: "not run: 12 s of the budget left, ~35 s needed (a trial of the search it "
                                  "compares with)" for label in bench.PRESETS}
    closing = {"winner": {"speedup": 2.1, "runtime": "onnxruntime_cuda"}} if speed_winner else {}
    if presets:
        closing[bench.FP32_PRESET] = {"speedup": 1.3, "runtime": "eager_cuda"}
    return {"base": base, "about": "Base: ResNet-18.", "size": size, "speed": speed, "presets": done,
            "skipped": skipped, "closing": closing, "fronts": fronts, "device": "cuda",
            "device_name": "cuda (NVIDIA H200)", "batch": 1, "runtime": "best", "minutes": 8.0, "seconds": 470.0,
            "runtimes": {"eager": None, "onnxruntime": None,
                         "openvino": "not available on this machine: OpenVINO does not run on cuda"},
            "parts": {"base": 100.0, "size search": 150.0, "latency search": 180.0, "presets": 30.0, "closing": 10.0},
            "settings": {"size_s": 120.0, "speed_s": 150.0, "full_epochs": 5, "finetune_epochs": 1}}


@pytest.mark.fast
def test_the_gpu_block_marks_both_targets_and_sets_the_presets_beside_the_winners():
    text = bench.section(_result())
    assert text.startswith("### Auto-compress (GPU)") and "CPU rehearsal" not in text
    assert "Budget: 8 min for the whole command; used 7.8 min (base 100 s, size search 150 s" in text
    size = text.split("- Target (>= 5x smaller")[1].splitlines()[0]
    assert "**met** by trial 0: prune 48% -> INT8: 8.49x smaller, val drop 0.60 pt, test drop 0.50 pt" in size
    speed = text.split("- Target (the fastest GPU model within 0.5 pt)")[1].splitlines()[0]
    assert "**met**" in speed and "2.00x faster than the base on cuda" in speed and "2.10x in the closing" in speed
    assert "| trial 0: blocks 31% (FP32, no INT8) | onnxruntime_cuda | 0.5 | 1 | 2.00x | 2.10x |" in text
    assert "INT8 is left out" in text and "on cuda (NVIDIA H200) at batch 1, runtime best" in text
    assert "Runtimes on cuda here: eager, onnxruntime; openvino: not available on this machine" in text
    assert "| INT8 | 0.9390 | 0.10 pt | 3.91x | – | INT8: not timed on the GPU |" in text
    assert "Smallest preset within 1 pt (test): INT8, 3.91x smaller; the size search's winner: 8.49x (as small" in text
    assert (f"Speed on the GPU (closing re-timing, each paired with the base): {bench.FP32_PRESET} 1.30x in "
            "eager_cuda; the latency search's winner 2.10x in onnxruntime_cuda.") in text


@pytest.mark.fast
def test_the_gpu_block_says_by_how_much_a_target_was_missed_and_which_presets_did_not_run():
    text = bench.section(_result(size_winner=False, speed_winner=False, presets=False))
    size = text.split("- Target (>= 5x smaller")[1].splitlines()[0]
    assert "**missed**; trial 1 (prune 35% -> INT8): accuracy: lost 1.40 pt on validation, over the 1 pt limit" in size
    speed = text.split("- Target (the fastest GPU model within 0.5 pt)")[1].splitlines()[0]
    assert "**missed**: no trial within 0.5 pt; closest: trial 1" in speed
    for label in bench.PRESETS:
        assert f"- {label}: not run: 12 s of the budget left, ~35 s needed" in text
    slow = _result()
    slow["speed"]["search_front"][0]["cost_ratio"] = 1.25     # the winner within the limit ran slower than the base
    assert "**missed**: the winner, trial 0: blocks 31% (FP32, no INT8), is not faster than the base (0.80x)" in \
        bench.section(slow)


@pytest.mark.fast
def test_a_failed_search_or_a_call_stopped_midway_still_gives_a_block_saying_so():
    """One device call: a fault in the latency search must not lose the size search, and a call killed by its
    time limit keeps the block written so far (``emit`` after every part), marked incomplete."""
    failed = _result()
    failed["speed"], failed["errors"] = None, {"latency search": "RuntimeError: CUDA error: out of memory"}
    text = bench.section(failed)
    assert "**met** by trial 0: prune 48% -> INT8" in text                       # (a) kept
    assert "#### (b) The fastest model on the GPU within 0.5 pt\n\n- **Failed**: RuntimeError: CUDA error" in text
    midway = _result()
    del midway["speed"]
    midway["parts"] = {"base": 100.0, "size search": 150.0}
    text = bench.section(midway)
    assert "**incomplete**" in text and "Not reached: the command stopped before the latency search" in text
    assert "**met** by trial 0" in text and "- Not reached: the command stopped first." in text


@pytest.mark.fast
def test_without_cuda_the_gpu_bench_is_refused_and_points_to_the_rehearsal(monkeypatch, capsys):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_cpu.main(["--gpu", "--minutes", "1"]) == 2      # `python -m bench autocompress --gpu` lands here
    err = capsys.readouterr().err
    assert "--device cuda: this machine has no CUDA device" in err and "--device cpu" in err
    assert bench.main(["--device", "cpu", "--minutes", "0"]) == 2
    assert "--minutes: must be between" in capsys.readouterr().err


@pytest.mark.slow
def test_the_cpu_rehearsal_runs_the_gpu_path_end_to_end_and_never_touches_benchmarks_md(tmp_path, monkeypatch):
    """The GPU bench's whole path on the CPU with tiny settings (~45-75 s on 2 loaded cores): base, the size search
    (INT8), the latency search (FP32 cuts, timed on cpu), the presets if they fit, the closing re-timing; the block
    goes to --out, docs/BENCHMARKS.md stays as it was."""
    from engine.store import Store
    from conftest import SHARED_DATASETS
    small = SHARED_DATASETS / "cifar10-small.zip"
    if not small.is_file():
        pytest.skip(f"{small} not here")
    monkeypatch.setenv("SLIMBENCH_HOME", str(tmp_path / "ws"))
    doc_before = report.DOC.read_bytes() if report.DOC.is_file() else None
    out = tmp_path / "block.md"
    rc = bench_cpu.main(["--gpu", "--device", "cpu", "--cifar", str(small), "--arch", "resnet20", "--limit", "300",
                         "--val-limit", "100", "--test-limit", "200", "--image-size", "16", "--base-epochs", "1",
                         "--data-batch", "64", "--size-trials", "2", "--latency-trials", "2", "--full-epochs", "1",
                         "--minutes", "2", "--latency-runs", "6", "--int8-format", "qdq_reduce_range",
                         "--out", str(out)])
    assert rc == 0
    text = out.read_text()
    assert (report.DOC.read_bytes() if report.DOC.is_file() else None) == doc_before
    assert text.startswith("<!-- begin:gpu/autocompress -->\n### Auto-compress (GPU)") and "**CPU rehearsal**" in text
    assert (report.DOC.read_bytes() if report.DOC.is_file() else None) == doc_before
    for head in ("- Target (>= 5x smaller", "- Target (the fastest GPU model within 0.5 pt)"):
        verdict = text.split(head)[1].splitlines()[0]
        assert "**met**" in verdict or "**missed**" in verdict
    assert "#### The hand-made presets on the same base" in text
    assert all(label in text for label in bench.PRESETS)     # each run, or said not run with why
    store = Store(tmp_path / "ws")
    searches = {r["spec"]["name"]: r["record"] for r in store.list() if r["spec"]["method"]["name"] == "autocompress"}
    assert len(searches) == 2
    speed = next(rec for name, rec in searches.items() if "latency" in name)
    size = next(rec for name, rec in searches.items() if "size" in name)
    assert speed["search_latency_device"].startswith("cpu (") and size["search_latency_device"] is None
    assert speed["search_trials"] >= 1 and size["search_trials"] >= 1
    # the latency search ran the FP32 cuts (seeded from the measured INT8 recipes), the size search ended in INT8
    ran = {k: [t for t in rec["search_trial_list"] if t["state"] in ("complete", "pruned")]   # not those waiting
           for k, rec in (("speed", speed), ("size", size))}
    assert ran["speed"] and all("no INT8" in t["recipe"] for t in ran["speed"])
    assert ran["size"] and all("-> INT8" in t["recipe"] for t in ran["size"])
