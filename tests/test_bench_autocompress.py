"""bench autocompress's block: the front and the presets in one table with speed-ups from one closing interleaved
re-timing, the winner against the best preset, the CPU target marked met or missed by how much, and whether the
front dominates the presets."""
from __future__ import annotations

import pytest

from bench import autocompress as bench


def rec(run_id, acc, size):
    return {"run_id": run_id, "accuracy": acc, "size_bytes": size, "checkpoint": f"/runs/{run_id}/model.pt"}


def timed(fastest: str, same: float, vs_best: float, refused: dict | None = None) -> dict:
    return {"fastest": fastest, "x_faster_same": same, "x_faster_vs_base_fastest": vs_best, "refused": refused or {},
            "runtimes": {}}


def result(front_size: int, front_best: float, winner: bool = True) -> dict:
    base = rec("base", 0.90, 4000)
    trials = [{"trial": 0, "state": "complete", "recipe": "prune -> INT8", "run_id": "t0", "drop_pt": 0.4,
               "cost_ratio": 0.25, "why": None, "runtime": "int8 onnxruntime"},
              {"trial": 1, "state": "pruned", "recipe": "distill", "run_id": "t1", "drop_pt": None,
               "why": "stopped after its fine-tune: 9 pt below"},
              {"trial": 2, "state": "complete", "recipe": "distill (full recipe of trial 1)", "run_id": "t2",
               "drop_pt": 3.0, "cost_ratio": 0.5, "why": None, "promoted_from": 1}]
    search = {"search_front": [trials[0]], "search_trial_list": trials, "search_trials": 3,
              "search_winner": "t0" if winner else None, "search_why": "no trial met the limit; closest: ...",
              "search_timing": "one at a time", "search_seconds": 90.0}
    retimed = {"rounds": 7, "threads": 2, "base_fastest": "onnxruntime", "missing": {},
               "models": {"base": timed("onnxruntime", 1.0, 1.0, {"openvino": "top-1 agreed with eager on 50.0%"}),
                          "trial 0: prune -> INT8": timed("int8 onnxruntime", 3.0, front_best),
                          "INT8": timed("int8 onnxruntime", 2.1, 1.33),
                          "structured 50 %": timed("onnxruntime", 1.6, 1.6)}}
    return {"base": base, "search": search, "front_records": {"t0": rec("t0", 0.898, front_size)},
            "presets": {"INT8": rec("p1", 0.899, 1000), "structured 50 %": rec("p2", 0.85, 2000)},
            "minutes": 2.0, "seconds": 300.0, "about": "Base: tiny.", "retimed": retimed}


def row_of(text: str, label: str) -> list[str]:
    return [c.strip() for c in text.split(f"| {label} |")[1].splitlines()[0].split("|")][:-1]


@pytest.mark.fast
def test_block_marks_the_target_met_and_compares_the_winner_with_the_best_preset():
    text = bench.section(result(front_size=800, front_best=4.0))
    assert "| trial 0: prune -> INT8 | search front |" in text and "| INT8 | preset |" in text
    assert "| base | base |" in text
    assert "**met** by trial 0" in text
    assert "Trials stopped early: 1: trial 1 (distill): stopped after its fine-tune" in text
    assert "1 of them the full recipe" in text
    # the best preset within 1 pt is INT8 (the structured one lost 5 pt on test): 1.33x faster, the winner 4x
    assert "Best preset within 1 pt (test): INT8: 4.00x smaller, 1.33x faster" in text and "as fast or faster" in text
    assert "Budget used: 1.5 of 2 min" in text and "3 trial(s) finished or stopped" in text
    # the table's speed-ups come from the closing re-timing: same runtime, and vs the base's fastest (named)
    assert "x faster vs the base's fastest (onnxruntime)" in text and "one interleaved run (7 rounds" in text
    assert row_of(text, "trial 0: prune -> INT8")[-4:] == ["int8 onnxruntime", "3.00x", "4.00x", "4.00x"]
    assert ("Refused (outputs disagree with eager, or an INT8 file's with its own runtime): base: openvino: top-1 "
            "agreed") in text
    # INT8 4x smaller 1.33x faster: the front model (5x, 4x) matches it; the structured preset lost 5 pt on
    # test, outside the 1-pt limit, so it is no answer and is not compared
    dom = text.split("- Front dominates the presets kept within 1 pt")[1].splitlines()[0]
    assert "**met**: INT8 by trial 0" in dom and "outside the limit, not compared: structured 50 %" in dom


@pytest.mark.fast
def test_block_says_which_bound_a_missed_target_failed_and_by_how_much():
    text = bench.section(result(front_size=2000, front_best=1.5, winner=False))
    verdict = text.split("- Target")[1].splitlines()[0]
    assert "**missed**" in verdict and "size: 2.00x smaller < 4x (short by 2.00x)" in verdict
    assert "speed: 1.50x faster (fastest runtime vs the base's) < 2x (short by 0.50x)" in verdict
    assert "accuracy" not in verdict
    assert "Winner: none. no trial met the limit" in text
    assert "Why (speed)" not in text   # no floor probe timed: no reason claimed
    res = result(front_size=2000, front_best=1.5, winner=False)
    res["base"]["macs"] = 6400
    res["retimed"]["models"][bench.FLOOR] = timed("onnxruntime", 1.7, 1.7)
    res["retimed"]["floor_macs"] = 100
    why = bench.section(res).split("- Why (speed): ")[1].splitlines()[0]
    assert "64x fewer MACs" in why and "**1.70x** faster than the base in onnxruntime" in why
    assert "below the 2x target" in why and "no width cut" in why
    res["retimed"]["models"][bench.FLOOR] = timed("onnxruntime", 3.0, 3.0)
    assert "above the 2x target" in bench.section(res).split("- Why (speed): ")[1]
    # 2x smaller: smaller than the INT8 preset (4x), so the front does not dominate it
    dom = text.split("- Front dominates the presets kept within 1 pt")[1].splitlines()[0]
    assert "**missed**" in dom and "INT8 not matched by any front model" in dom


@pytest.mark.fast
def test_the_bench_searches_latency_at_batch_1_in_the_best_runtime_and_retimes_at_the_end(monkeypatch):
    """How the target is judged: batch 1, each model in its fastest runtime; every model of the table timed
    again in one run after the search."""
    specs, retimed = [], []

    def fake_run_spec(spec, store):
        specs.append(spec)
        return {"run_id": f"r{len(specs)}", "accuracy": 0.9, "search_front": [], "checkpoint": "c"}
    monkeypatch.setattr(bench, "run_spec", fake_run_spec)
    monkeypatch.setattr(bench, "retime_all", lambda base, done, search, fronts, data: retimed.append(done) or {})
    out = bench.run(None, minutes=1.0, base_epochs=1, limit=100, trials=2, parallel=1, dataset="digits")
    params = specs[-1]["method"]["params"]
    assert specs[-1]["method"]["name"] == "autocompress"
    assert (params["objective"], params["runtime"], params["batch"]) == ("latency", "best", 1)
    assert list(retimed[0]) == list(bench.PRESETS) and out["retimed"] == {}


def test_the_closing_retiming_pairs_every_model_with_the_base_in_one_run(tmp_path, monkeypatch):
    """A tiny real net in every runtime here, a copy of it, and two "INT8" models (the net's ONNX Runtime and
    OpenVINO predictors standing in for an INT8 file loaded in each) in one interleaved run: the base against
    itself reads exactly 1x in each runtime, the copy (passed as a module, as the floor probe is) ~1x in its fastest, and an INT8 model is timed in each INT8
    runtime, paired with the base in that same runtime; one whose OpenVINO answers differ from its own runtime's
    is refused there, with why, and timed in ONNX Runtime only."""
    import statistics

    import torch

    from bench import autocompress_retime as rt
    from engine import deploy, export, models
    from engine.methods import search_latency

    net = models.build("resnet20", 10, small_input=True, width=0.25).eval()
    path = tmp_path / "model.pt"
    export.save_bundle(export.make_bundle(net, arch="resnet20", num_classes=10, small_input=True, meta={}), path)
    int8, bad = tmp_path / "int8.pt", tmp_path / "bad.pt"
    int8.write_bytes(b"")
    bad.write_bytes(b"")
    here = search_latency.here()
    int8_here = [r for r in ("onnxruntime", "openvino") if r in here]
    loaded = {}
    for r in int8_here:
        (tmp_path / r).mkdir()
        loaded[r] = deploy.predictor_for(r, net, (3, 8, 8), tmp_path / r, 1)
    seen_runtimes = []

    def runners(p, threads, runtimes):
        seen_runtimes.append(list(runtimes))
        fns = dict(loaded)
        if p == str(bad) and "openvino" in fns:
            fns["openvino"] = lambda x: loaded["openvino"](x).roll(1, dims=1)
        return fns, "onnxruntime", {}
    monkeypatch.setattr(rt, "is_int8", lambda p: p in (str(int8), str(bad)))
    monkeypatch.setattr(rt, "int8_runners", runners)
    seen = {}
    real = rt.int8_bench.interleaved

    def spy(fns, *a, **kw):
        seen.update(real(fns, *a, **kw))
        return seen
    monkeypatch.setattr(rt.int8_bench, "interleaved", spy)
    out = rt.retime({"base": str(path), "int8": str(int8), "bad": str(bad)}, "base", (3, 8, 8),
                    torch.randn(32, 3, 8, 8), 1, rounds=3, runs=8,
                    extra={"copy": models.build("resnet20", 10, small_input=True, width=0.25)})   # a module, no file
    assert seen_runtimes and all(set(r) == set(here) for r in seen_runtimes)
    base = out["models"]["base"]
    assert set(base["runtimes"]) == set(here) and not base["refused"]
    assert all(r["x_faster"] == 1.0 for r in base["runtimes"].values()) and base["x_faster_vs_base_fastest"] == 1.0
    assert out["base_fastest"] == base["fastest"]
    copy = out["models"]["copy"]
    assert 0.5 < copy["x_faster_same"] < 2.0
    q = out["models"]["int8"]
    assert set(q["runtimes"]) == {f"int8 {r}" for r in int8_here} and not q["refused"]
    for name, r in q["runtimes"].items():      # each INT8 runtime paired with the base in the same runtime
        assert r["vs"] == name.removeprefix("int8 ")
        assert r["x_faster"] == statistics.median(
            b / m for b, m in zip(seen[("base", r["vs"])], seen[("int8", name)]))
    assert q["fastest"] == min(q["runtimes"], key=lambda n: q["runtimes"][n]["latency_ms"])
    assert q["x_faster_same"] == q["runtimes"][q["fastest"]]["x_faster"]
    wrong = out["models"]["bad"]
    assert set(wrong["runtimes"]) == {"int8 onnxruntime"}
    if "openvino" in int8_here:
        assert "agreed with its own runtime (onnxruntime)" in wrong["refused"]["int8 openvino"]


@pytest.mark.fast
def test_table_cells_are_rounded_as_the_prose_writes_them():
    """Unrounded ratios and drops (3.416, 0.06667) read as 3.42x and 0.07 pt, as in the winner's sentence; a
    figure nobody measured stays a dash."""
    res = result(front_size=1171, front_best=1.7152)
    res["search"]["search_front"][0]["drop_pt"] = 0.0666667
    res["front_records"]["t0"]["accuracy"] = 0.88583
    text = bench.section(res)
    kind, top1, test_drop, val_drop, smaller, runtime, same, best, search = row_of(
        text, "trial 0: prune -> INT8")
    assert (top1, test_drop, val_drop) == ("0.8858", "1.42 pt", "0.07 pt")
    assert (smaller, same, best, search) == ("3.42x", "3.00x", "1.72x", "4.00x")
    preset = row_of(text, "INT8")
    assert preset[3] == "–" and preset[-1] == "–" and preset[2] == "0.10 pt"
    assert "val drop 0.07 pt" in text.split("- Winner:")[1].splitlines()[0]
