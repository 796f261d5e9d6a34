"""Streamlit-free helpers behind the dashboard: results table, presets, telemetry, saliency, predictions."""
from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from bench.synthetic import insert_synthetic_runs
from engine import methods, presets, results, saliency, stats, telemetry, training
from engine.store import Store


def rec(run_id, parent=None, **kw):
    base = {"run_id": run_id, "parent": parent, "name": run_id, "method": "m", "arch": "resnet18",
            "dataset": "digits"}
    return {**base, **kw}


# -- results --------------------------------------------------------------------------------------
@pytest.mark.fast
def test_table_is_relative_to_the_root_of_the_parent_chain():
    recs = [rec("base", accuracy=0.90, size_bytes=1000, macs=800, latency_ms=4.0),
            rec("pruned", "base", accuracy=0.88, size_bytes=250, macs=200, latency_ms=2.0),
            rec("quant", "pruned", accuracy=0.85, size_bytes=100, macs=200, latency_ms=1.0),
            rec("orphan", "gone", accuracy=0.5, size_bytes=10, macs=None, latency_ms=None)]
    df = results.table(recs).set_index("run_id")
    assert df.loc["base", "x_smaller"] == 1.0 and df.loc["base", "delta_accuracy"] == 0.0
    assert df.loc["pruned", "x_smaller"] == 4.0 and df.loc["pruned", "x_fewer_macs"] == 4.0
    assert df.loc["pruned", "x_faster"] == 2.0
    assert df.loc["quant", "base_id"] == "base" and df.loc["quant", "x_smaller"] == 10.0
    assert df.loc["quant", "delta_accuracy"] == pytest.approx(-0.05)
    assert df.loc["orphan", "base_id"] == "orphan" and math.isnan(df.loc["orphan", "x_fewer_macs"])


def test_x_faster_prefers_paired_timings_chained_along_the_parents():
    recs = [rec("base", latency_ms=4.0),
            rec("pruned", "base", latency_ms=1.0, paired_speedup=2.5, paired_ref="base"),
            rec("quant", "pruned", latency_ms=0.5, paired_speedup=3.0, paired_ref="pruned"),
            rec("old", "base", latency_ms=2.0),                         # recorded before paired timing
            rec("after_old", "old", latency_ms=1.0, paired_speedup=1.5, paired_ref="old"),
            rec("ckpt", None, latency_ms=1.0, paired_speedup=9.0, paired_ref="checkpoint")]
    df = results.table(recs).set_index("run_id")
    assert df.loc["pruned", "x_faster"] == 2.5 and df.loc["pruned", "x_faster_paired"]
    assert df.loc["quant", "x_faster"] == pytest.approx(7.5) and df.loc["quant", "x_faster_paired"]
    assert df.loc["old", "x_faster"] == 2.0 and not df.loc["old", "x_faster_paired"]
    assert df.loc["after_old", "x_faster"] == 4.0 and not df.loc["after_old", "x_faster_paired"]
    assert df.loc["ckpt", "x_faster"] == 1.0 and not df.loc["ckpt", "x_faster_paired"]
    assert not df.loc["base", "x_faster_paired"]


def test_x_faster_range_and_int8_against_its_own_fp32_model():
    recs = [rec("base", latency_ms=4.0),
            rec("pruned", "base", paired_speedup=2.0, paired_speedup_range=[1.5, 2.5], paired_ref="base"),
            # INT8 (ONNX Runtime) timed against the PyTorch-eager start looks 40x faster; against its own fp32
            # model under the same runtime, 1.6x: only the latter is the gain of quantising
            rec("int8", "pruned", paired_speedup=40.0, paired_speedup_range=[30.0, 50.0], paired_ref="pruned",
                int8_speedup=1.6, int8_speedup_range=[1.4, 1.8])]
    df = results.table(recs).set_index("run_id")
    assert df.loc["pruned", ["x_faster_low", "x_faster_high"]].tolist() == [1.5, 2.5]
    assert df.loc["int8", "x_faster"] == pytest.approx(3.2) and df.loc["int8", "x_faster_paired"]
    assert df.loc["int8", ["x_faster_low", "x_faster_high"]].tolist() == pytest.approx([2.1, 4.5])
    assert df.loc["int8", "int8_speedup"] == 1.6 and np.isnan(df.loc["base", "x_faster_low"])
    # a pipeline run's model is its last step's: its speed-up is that of its steps, multiplied
    recs.append(rec("pipe", "base", paired_speedup=40.0, int8_speedup=1.6, paired_ref="base",
                    pipeline_runs=["pruned", "int8"]))
    assert results.table(recs).set_index("run_id").loc["pipe", "x_faster"] == pytest.approx(3.2)


def test_an_under_trained_base_is_recognised_from_its_history():
    h = lambda *acc: {"history": [{"phase": "train", "val_acc": a} for a in acc]}  # noqa: E731
    assert results.still_learning(h(0.5)) == "it trained for a single epoch"
    assert "rose 20.0 points" in results.still_learning(h(0.3, 0.5))
    assert results.still_learning(h(0.3, 0.5, 0.505)) is None and results.still_learning({}) is None


def test_delta_accuracy_sums_in_job_comparisons_and_refuses_different_test_sets():
    recs = [rec("base", accuracy=0.90, test_images=100),
            # each step compared with its start on its own test images, in its own job
            rec("pruned", "base", accuracy=0.80, start_accuracy=0.85, test_images=500),
            rec("quant", "pruned", accuracy=0.78, start_accuracy=0.81, test_images=500),
            rec("old_same", "base", accuracy=0.88, test_images=100),      # before in-job comparison
            rec("old_other", "base", accuracy=0.70, test_images=500),     # other test set: no Δ at all
            rec("after_old", "old_other", accuracy=0.69, start_accuracy=0.70, test_images=500)]
    df = results.table(recs).set_index("run_id")
    assert df.loc["pruned", "delta_accuracy"] == pytest.approx(-0.05)     # not 0.80 - 0.90
    assert df.loc["quant", "delta_accuracy"] == pytest.approx(-0.05 - 0.03)
    assert df.loc["old_same", "delta_accuracy"] == pytest.approx(-0.02)
    assert math.isnan(df.loc["old_other", "delta_accuracy"])
    assert math.isnan(df.loc["after_old", "delta_accuracy"])             # a step without the comparison
    assert df.loc["base", "delta_accuracy"] == 0.0


def test_against_start_counts_agreement_and_flips_exactly():
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    start = torch.tensor([0, 1, 2, 1, 1, 0])      # right on 0, 1, 2, 4
    now = torch.tensor([0, 2, 2, 0, 1, 0])        # right on 0, 2, 3, 4
    one_hot = lambda p: torch.nn.functional.one_hot(p, 3).float()  # noqa: E731
    m = training.against_start(one_hot(now), one_hot(start), y, 3)
    assert m["start_accuracy"] == pytest.approx(4 / 6)
    assert m["agreement"] == pytest.approx(4 / 6)             # images 0, 2, 4, 5
    assert m["flips_to_wrong"] == pytest.approx(1 / 6)        # image 1
    assert m["flips_to_right"] == pytest.approx(1 / 6)        # image 3
    assert m["start_per_class_accuracy"] == pytest.approx([0.5, 1.0, 0.5])
    assert training.against_start(one_hot(now), one_hot(start), y, 4)["start_per_class_accuracy"][3] is None
    assert m["mcnemar_p"] == 1.0 and m["delta_accuracy_ci95"][0] < 0 < m["delta_accuracy_ci95"][1]


@pytest.mark.fast
def test_accuracy_intervals_match_known_values_and_mcnemar_is_exact():
    assert stats.wilson(0, 3)[0] == 0.0 and stats.wilson(3, 3)[1] == 1.0  # exact at the ends
    assert stats.wilson(50, 100) == pytest.approx([0.4038, 0.5962], abs=1e-4)
    assert stats.wilson(0, 10) == pytest.approx([0.0, 0.2775], abs=1e-4)
    assert stats.mcnemar_p(1, 9) == pytest.approx(2 * 11 / 1024)      # P(X <= 1 | 10 flips, 1/2), both tails
    assert stats.mcnemar_p(3, 3) == 1.0 and stats.mcnemar_p(0, 0) == 1.0


@pytest.mark.parametrize("p_right, p_wrong", [(0.03, 0.05), (0.004, 0.012), (0.02, 0.02)])
def test_paired_interval_covers_the_true_difference_95_percent_of_the_time(p_right, p_wrong):
    """Simulated pairs of models on 500 test images with known flip rates: the interval holds the true
    difference in about 95 % of draws (few flips included), and McNemar at 5 % errs at most 5 % under no difference."""
    n, draws = 500, 4000
    counts = np.random.default_rng(0).multinomial(n, [p_right, p_wrong, 1 - p_right - p_wrong], size=draws)
    truth = p_right - p_wrong
    out = [stats.paired_difference(int(c[0]), int(c[1]), n) for c in counts]
    coverage = np.mean([lo <= truth <= hi for lo, hi in (o["ci95"] for o in out)])
    assert 0.93 <= coverage <= 0.975, coverage
    if truth == 0:
        assert np.mean([o["p"] < 0.05 for o in out]) <= 0.05


def test_delta_interval_only_for_runs_compressed_straight_from_their_base():
    recs = [rec("base", accuracy=0.90, test_images=500),
            rec("pruned", "base", accuracy=0.86, start_accuracy=0.90, test_images=500,
                delta_accuracy_ci95=[-0.06, -0.02], mcnemar_p=0.001),
            rec("quant", "pruned", accuracy=0.85, start_accuracy=0.86, test_images=500,
                delta_accuracy_ci95=[-0.02, 0.0], mcnemar_p=0.2)]
    df = results.table(recs).set_index("run_id")
    assert (df.loc["pruned", "delta_ci_low"], df.loc["pruned", "delta_ci_high"]) == (-0.06, -0.02)
    assert df.loc["pruned", "mcnemar_p"] == 0.001
    for run in ("base", "quant"):   # nothing to compare / steps of a chain do not add up to an interval
        assert df.loc[run, ["delta_ci_low", "delta_ci_high", "mcnemar_p"]].isna().all()


def test_gpu_x_faster_chains_paired_gpu_timings_and_falls_back_to_latencies():
    recs = [rec("base", gpu_latency_ms=3.0),
            rec("pruned", "base", gpu_latency_ms=2.0, gpu_paired_speedup=1.2, paired_ref="base"),
            rec("quant", "pruned", gpu_latency_ms=1.0, gpu_paired_speedup=2.0, paired_ref="pruned"),
            rec("old", "base", gpu_latency_ms=1.5)]
    df = results.table(recs).set_index("run_id")
    assert df.loc["base", "gpu_x_faster"] == 1.0
    assert df.loc["pruned", "gpu_x_faster"] == pytest.approx(1.2)       # paired, not 3.0 / 2.0
    assert df.loc["quant", "gpu_x_faster"] == pytest.approx(2.4)
    assert df.loc["old", "gpu_x_faster"] == pytest.approx(2.0)          # separate latencies


def test_suggestions_and_layer_widths_tables():
    sens = {"suggested_ratios": {"conv1": 0.5, "layer1.0.conv1": 0.0},
            "sensitivity_layers": {"conv1": {"channels": 64, "macs": 100}, "layer1.0.conv1": {"channels": 64}}}
    s = results.suggestions(sens).set_index("layer")
    assert s.loc["conv1", "channels removed"] == 32 and s.loc["layer1.0.conv1", "channels removed"] == 0
    w = results.layer_widths({"layer_widths": {"conv1": [64, 16], "fc": "broken"}}).set_index("layer")
    assert list(w.index) == ["conv1"] and w.loc["conv1", "kept"] == 0.25
    assert results.suggestions({}).empty and results.layer_widths({}).empty


@pytest.mark.fast
def test_pareto_front_keeps_only_undominated_runs():
    recs = [rec("a", accuracy=0.9, size_bytes=100), rec("b", accuracy=0.8, size_bytes=50),
            rec("c", accuracy=0.7, size_bytes=80),   # dominated by b (bigger and worse)
            rec("d", accuracy=0.95, size_bytes=400), rec("e", accuracy=0.9, size_bytes=200)]  # e dominated by a
    df = results.table(recs)
    front = results.pareto_front(df, "size_bytes")
    assert list(front["run_id"]) == ["b", "a", "d"]


@pytest.mark.fast
def test_job_progress_and_curves_from_events():
    row = {"state": "running", "last_event": {"phase": "train", "epoch": 2, "epochs": 4, "step": 5, "steps": 10,
                                               "eta_s": 30.0, "images_per_s": 100.0}}
    p = results.job_progress(row)
    assert p["progress"] == pytest.approx((1 + 0.5) / 4) and p["epoch"] == "2/4" and p["eta_s"] == 30.0
    assert results.job_progress({"state": "done", "last_event": None})["progress"] == 1.0
    assert results.job_progress({"state": "queued", "waiting_for": "x"})["phase"] == "waiting for x"
    sens = {"state": "running", "last_event": {"phase": "sensitivity", "step": 3, "steps": 12}}
    assert results.job_progress(sens)["progress"] == 0.25 and results.job_progress(sens)["epoch"] == ""
    assert results.job_progress({"state": "running", "last_event": {"phase": "measure"}})["progress"] is None
    ev = [{"phase": "train", "epoch": 1, "epochs": 1, "step": 2, "steps": 4, "loss": 2.0, "acc": 0.3},
          {"phase": "train:val", "epoch": 1, "epochs": 1, "loss": 1.5, "acc": 0.5, "val_acc": 0.5},
          {"phase": "data"}]
    c = results.curves(ev)
    assert list(c["split"]) == ["train", "val"] and list(c["epoch"]) == [0.5, 1]
    retried = results.curves(ev + [{"phase": "queued", "attempt": 2}, {**ev[0], "loss": 1.0}])
    assert list(retried["loss"]) == [1.0]  # the latest attempt only, not a line back to epoch 0


@pytest.mark.parametrize("sens", [
    {"layer1": [{"amount": 0.1, "accuracy": 0.9}, {"amount": 0.5, "accuracy": 0.7}]},
    {"layer1": [[0.1, 0.9], [0.5, 0.7]]},
    [{"layer": "layer1", "ratio": 0.1, "accuracy": 0.9}, {"layer": "layer1", "ratio": 0.5, "accuracy": 0.7}],
    {"curves": {"layer1": {"0.1": 0.9, "0.5": 0.7}}},
])
def test_sensitivity_curves_accept_the_common_shapes(sens):
    c = results.sensitivity_curves({"sensitivity": sens})
    assert c.to_dict("records") == [{"layer": "layer1", "amount": 0.1, "accuracy": 0.9},
                                    {"layer": "layer1", "amount": 0.5, "accuracy": 0.7}]


def test_synthetic_rows_are_labelled(tmp_path):
    store = Store(tmp_path)
    ids = insert_synthetic_runs(store, 20)
    recs = results.records(store)
    assert len(recs) == 20 and all(r["synthetic"] and r["name"].startswith("synthetic") for r in recs)
    df = results.table(recs)
    assert (df["base_id"] == ids[0]).all()
    # one block per dtype, not one per column: Compare's assigns on a fragmented table warned and copied it
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.PerformanceWarning)
        for i in range(3):
            df = df.assign(**{f"extra{i}": range(len(df))})
    assert df["name"].map(type).eq(str).all() and df["accuracy"].dtype.kind == "f"


# -- presets ----------------------------------------------------------------------------------------
def _registry():
    try:
        return methods.load_all()
    except Exception:
        return methods.METHODS


def test_quick_tour_has_a_baseline_and_every_registered_method():
    reg = _registry()
    plan = presets.quick_tour()
    assert plan[0]["method"]["name"] == "baseline" and plan[0]["model"] == {"arch": presets.QUICK_ARCH}
    # a control needs the run it controls: presets.with_controls adds those, not the registry walk
    assert {s["method"]["name"] for s in plan[1:]} == set(reg) - {"baseline", "control", "autocompress"}
    for s in plan[1:]:
        assert s["model"] == {"from_run": presets.BASE} and s["train"]["epochs"] == 1
        own = presets.QUICK_OVERRIDES.get(s["method"]["name"], {})
        for p in reg[s["method"]["name"]].params:  # every other epoch knob at its smallest useful value
            if p.kind == "int" and "epoch" in p.name and p.name in s["method"]["params"] and p.name not in own:
                assert s["method"]["params"][p.name] <= 1 or s["method"]["params"][p.name] == p.low


def test_plan_launch_resolves_references_and_check_drops_invalid_children():
    plan = presets.custom_plan(data={"name": "digits"}, model={"arch": "resnet18"}, base_train={"epochs": 1},
                               steps=[], train={"epochs": 1}, measure={"onnx": False})
    bad_child = {"name": "bad", "data": {"name": "digits"}, "model": {"from_run": presets.ref(0)},
                 "method": {"name": "no-such-method", "params": {}}}
    grandchild = {"name": "gc", "data": {"name": "digits"}, "model": {"from_run": presets.ref(1)},
                  "method": {"name": "baseline", "params": {}}}
    ok, problems = presets.check(plan + [bad_child, grandchild])
    assert len(ok) == 1 and len(problems) == 2 and "no-such-method" in problems[0]
    submitted = []
    ids = presets.launch(plan + [dict(grandchild, model={"from_run": presets.ref(0)})],
                         lambda s: submitted.append(s) or f"job{len(submitted)}")
    assert ids == ["job1", "job2"] and submitted[1]["model"]["from_run"] == "job1"


def test_chained_plan_and_sweeps():
    plan = presets.custom_plan(data={"name": "digits"}, model={"from_run": "r1"}, base_train={},
                               steps=[("a", [{"x": 1}]), ("b", [{"y": 2}])], train={}, measure={}, chain=True)
    assert [s["model"]["from_run"] for s in plan] == ["r1", presets.ref(0)]
    assert [s["name"] for s in plan] == ["step 1/2 a", "step 2/2 b"]
    swept = presets.custom_plan(data={"name": "digits"}, model={"from_run": "r1"}, base_train={}, train={},
                                measure={}, steps=[("a", presets.sweep({"x": 1, "y": 0}, "x", [0.3, 0.5]))])
    assert [s["name"] for s in swept] == ["a (x=0.3)", "a (x=0.5)"]  # only what varies
    int8_first = presets.custom_plan(data={"name": "digits"}, model={"from_run": "r1"}, base_train={}, train={},
                                     measure={}, chain=True, steps=[("quantize_int8", [{}]),
                                                                    ("prune_unstructured", [{}])])
    ok, problems = presets.check(int8_first)
    assert len(ok) == 1 and "INT8 ONNX Runtime model" in problems[0] and "put quantize_int8 last" in problems[0]
    assert presets.sweep({"x": 1, "y": 0}, "x", [0.3, 0.5]) == [{"x": 0.3, "y": 0}, {"x": 0.5, "y": 0}]
    p = methods.Param("ratio", "float", 0.5, low=0, high=1, high_open=True)
    assert presets.parse_values(p, "0.3, 0.5,0.7", "m.ratio") == [0.3, 0.5, 0.7]
    from engine.spec import SpecError
    with pytest.raises(SpecError, match="m.ratio"):
        presets.parse_values(p, "0.3, 1.0", "m.ratio")
    with pytest.raises(SpecError, match="not a float"):
        presets.parse_values(p, "abc", "m.ratio")


# -- telemetry --------------------------------------------------------------------------------------
def test_no_gpu_state_is_reported_not_raised(monkeypatch):
    import pynvml

    def fail():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    monkeypatch.setattr(pynvml, "nvmlInit", fail)
    monkeypatch.setattr(telemetry, "_nvml_state", {"init": False, "error": None})
    snap = telemetry.gpu_snapshot()
    assert snap["available"] is False and snap["gpus"] == [] and "NVML" in snap["reason"]


def test_system_snapshot_and_history():
    import psutil
    s = telemetry.system_snapshot()
    assert s["ram_total_bytes"] == psutil.virtual_memory().total and 0 <= s["ram_pct"] <= 100
    smp = telemetry.Sampler(seconds=0.05, min_interval=0)
    smp.sample()
    import time
    time.sleep(0.1)
    smp.sample()
    assert len(smp.points()) == 1  # the older sample fell out of the window


def test_cpu_use_is_read_over_a_real_interval_and_never_made_up():
    """CPU use comes from two readings the sampler owns; a reading ms after the last one is not taken
    (it showed 0 % on entering the page), nor one after a long unwatched gap."""
    import time
    smp = telemetry.Sampler(seconds=60, min_interval=0.5, max_gap=1.5)
    first = smp.sample()
    assert first["point"]["cpu_pct"] is None  # nothing to compare with yet
    end = time.monotonic() + 0.6
    while time.monotonic() < end:  # keep one core busy
        pass
    second = smp.sample()
    assert 0 < second["point"]["cpu_pct"] <= 100
    assert smp.sample() is second and len(smp.points()) == 2  # a second caller at once gets the same sample
    time.sleep(1.7)
    assert smp.sample()["point"]["cpu_pct"] is None and len(smp.points()) == 3


def test_busy_share_between_two_cpu_time_readings():
    from collections import namedtuple
    T = namedtuple("T", "user nice system idle iowait guest guest_nice")
    assert telemetry.busy_pct(T(10, 0, 10, 70, 10, 5, 0), T(40, 0, 20, 100, 20, 25, 0)) == 50.0
    assert telemetry.busy_pct(T(1, 0, 0, 1, 0, 0, 0), T(1, 0, 0, 1, 0, 0, 0)) is None


def test_job_processes_are_labelled():
    import subprocess
    import time

    import psutil
    job = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])  # a "job" with a child process
    try:
        deadline = time.time() + 10
        while not psutil.Process(job.pid).children() and time.time() < deadline:
            time.sleep(0.05)
        child = psutil.Process(job.pid).children()[0].pid
        pids = telemetry.job_pids([{"id": "job1", "state": "running", "pid": job.pid},
                                   {"id": "job2", "state": "done", "pid": 1}])
        assert pids == {job.pid: "job1", child: "job1"}
        snap = {"gpus": [{"index": 0, "processes": [{"pid": child, "name": "sleep", "memory_used_bytes": 5},
                                                    {"pid": 999999, "name": "other", "memory_used_bytes": 7}]}]}
        assert [p["job"] for p in telemetry.label_processes(snap, pids)] == ["job1", None]
    finally:
        for p in psutil.Process(job.pid).children():
            p.kill()
        job.kill()
        job.wait()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_snapshot_sees_this_process_memory():
    x = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    snap = telemetry.gpu_snapshot()
    assert snap["available"] and snap["gpus"][0]["memory_used_bytes"] >= x.numel()
    assert snap["gpus"][0]["memory_total_bytes"] > snap["gpus"][0]["memory_used_bytes"]


# -- saliency ----------------------------------------------------------------------------------------
class PatchDetector(nn.Module):
    """conv -> ReLU -> global average pool -> linear: class 1 means "bright patch somewhere"."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight.fill_(0.1)
            self.conv.bias.fill_(-0.2)   # dark pixels stay at zero after the ReLU
            self.fc.weight.copy_(torch.tensor([[-1.0] * 4, [1.0] * 4]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("corner", ["top_left", "bottom_right"])
def test_grad_cam_points_at_the_evidence(corner):
    x = torch.zeros(1, 3, 16, 16)
    patch = (slice(1, 6), slice(1, 6)) if corner == "top_left" else (slice(10, 15), slice(10, 15))
    x[0, :, patch[0], patch[1]] = 1.0
    cam = saliency.grad_cam(PatchDetector(), x, target=1)
    assert cam.shape == (16, 16) and cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    inside = cam[patch[0], patch[1]].mean()
    mask = np.ones((16, 16), bool)
    mask[patch[0], patch[1]] = False
    assert inside > 0.5 and cam[mask].mean() < 0.2 * inside
    over = saliency.overlay((np.random.rand(16, 16) * 255).astype(np.uint8), cam, size=32)
    assert over.shape == (32, 32, 3) and over.dtype == np.uint8


# -- predictions -------------------------------------------------------------------------------------
def test_predictor_top5_latency_and_agreement_with_the_model(tiny_base, session_home):
    from PIL import Image

    from engine import export, predict
    from engine.data import load
    from engine.spec import DataSpec
    pred = predict.load_run(tiny_base["run_id"], Store(session_home))
    assert pred.class_names == [str(i) for i in range(10)] and pred.is_torch
    data = load(DataSpec(name="digits"))
    model, bundle = export.load_model(tiny_base["checkpoint"])
    agree = 0
    for i in range(10):
        buf = io.BytesIO()
        Image.fromarray(data.test.x[i, 0].numpy()).save(buf, format="PNG")
        out = pred.predict(buf.getvalue())
        probs = [p for _, p in out.top]
        assert len(out.top) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert out.latency_ms > 0
        ref = model(pred.preprocess(buf.getvalue())).argmax(1).item()
        agree += out.index == ref
    assert agree == 10
    samples = predict.test_samples({"name": "digits"}, 3)
    assert [lbl for lbl, _ in samples] == [str(int(y)) for y in data.test.y[:3]]
    with pytest.raises(predict.PredictError, match="not a run id"):
        predict.load_run("../etc", Store(session_home))
    with pytest.raises(predict.PredictError, match="no run"):
        predict.load_run("missing-run", Store(session_home))


def test_working_copy_reduces_large_images_once_and_leaves_small_ones():
    from PIL import Image

    from engine import predict
    buf = io.BytesIO()
    Image.new("RGB", (4000, 1000), (200, 30, 30)).save(buf, format="JPEG")
    small, size = predict.working_copy(buf.getvalue())
    assert size == (4000, 1000) and Image.open(io.BytesIO(small)).size == (1024, 256)  # aspect kept
    same, size = predict.working_copy(small)
    assert same is small and size == (1024, 256)
    from engine.data import ImageError
    with pytest.raises(ImageError, match="not an image"):
        predict.working_copy(b"not an image")


@pytest.mark.fast
def test_dashboard_formats_numpy_scalars_and_uses_decimal_units():
    from views.common import fmt_bytes, fmt_count, fmt_seconds, fmt_value
    assert fmt_bytes(np.int64(44_775_307)) == fmt_bytes(44_775_307) == "44.8 MB"  # as the MB limits take it
    assert fmt_bytes(999) == "999 B" and fmt_bytes(1500) == "1.5 kB" and fmt_bytes(float("nan")) == "—"
    assert fmt_count(np.int64(34_718_720)) == "34.7 M" and fmt_count(True) == "—" and fmt_count(None) == "—"
    assert fmt_value(np.float32(0.5), ".2f", " ms") == "0.50 ms" and fmt_seconds(np.int64(75)) == "1m15s"


def test_a_winner_is_picked_on_one_test_set_the_newest_runs():
    df = results.table([rec("a", accuracy=0.9, size_bytes=10, test_images=100, num_classes=10, finished=1.0),
                        rec("b", accuracy=0.5, size_bytes=20, test_images=8, num_classes=2, dataset="imagefolder",
                            finished=2.0),
                        rec("c", "b", accuracy=0.4, size_bytes=5, test_images=8, num_classes=2, dataset="imagefolder",
                            finished=3.0)])
    same, n = results.on_newest_test_set(df)
    assert n == 2 and sorted(same["run_id"]) == ["b", "c"]
    assert results.on_newest_test_set(same)[1] == 1
    # a does not beat b: other data (b and c, 8 images of 2 classes, are at chance level: let them in)
    assert results.pareto_mask(df, "size_bytes", include_chance=True).tolist() == [True, True, True]
    assert results.pareto_mask(df, "size_bytes").tolist() == [True, False, False]
