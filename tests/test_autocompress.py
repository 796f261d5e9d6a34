"""autocompress: a tiny Optuna search on digits finishes within its budget, chooses on the validation split
only, resumes after a kill without repeating a trial, and ends an impossible search with the closest trials."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from engine import methods, runtimes
from engine.methods import autocompress, int8_auto
from engine.runner import run_spec
from engine.spec import SpecError
from engine.store import Store

from conftest import ROOT, SMALL_DATA, SMALL_MEASURE, adopt_run

# The data and measurement of the shared small base (conftest): the searches here minimise size, so nothing
# is timed beyond the minimum a record needs
DATA, MEASURE = SMALL_DATA, SMALL_MEASURE
# target 1: every trial smaller than the start meets the budget, and the most accurate (on validation) wins
SEARCH = {"max_drop_pt": 100.0, "objective": "size", "target": 1.0, "trials": 2, "space": ["unstructured", "distill"], "seed": 3,
          "promote": 0}   # promotion (the full recipe for the best proxies) has its own test


def search_spec(base_id: str, **params) -> dict:
    return {"data": DATA, "model": {"from_run": base_id}, "train": {"epochs": 1}, "measure": MEASURE,
            "method": {"name": "autocompress", "params": {**SEARCH, **params}}}


@pytest.fixture(scope="module")
def ws(tmp_path_factory, small_base):
    """A workspace of the module's own, holding the session's small base (trained on DATA with MEASURE)."""
    store = Store(tmp_path_factory.mktemp("autocompress-ws"))
    return store, adopt_run(*small_base, store)


@pytest.fixture()
def first_int8_format(monkeypatch):
    """INT8 trials keep the first format `format: auto` tries (its agreement floor lowered to 0). On this one-epoch
    base no format meets the 97 % floor, so auto would quantise in every format and then search each for layers
    to keep FP32: most of these searches' minutes. The tests using this are about the search (which trials run,
    promotion, seeds), not the format; test_int8_auto covers the choice and its FP32 fallback."""
    real = int8_auto.choose
    monkeypatch.setattr(int8_auto, "choose", lambda *args, **kw: real(*args, **{**kw, "floor": 0.0}))


@pytest.fixture(scope="module")
def searched(ws):
    store, base = ws
    return run_spec(search_spec(base["run_id"]), store)


@pytest.mark.fast
@pytest.mark.parametrize("params, field", [({"trials": 0}, "method.params.trials"),
                                           ({"minutes": 0}, "method.params.minutes"),
                                           ({"space": ["nas"]}, "method.params.space")])
def test_a_search_budget_of_zero_is_refused_up_front(params, field):
    with pytest.raises(SpecError) as e:
        methods.validate("autocompress", params)
    assert e.value.field == field


def test_search_finishes_within_budget_with_linked_trials(ws, searched):
    store, _ = ws
    trials = searched["search_trial_list"]
    assert searched["search_trials"] == len(trials) == SEARCH["trials"]
    for t in trials:  # each trial is a normal run, a child of the search
        assert store.get(t["run_id"])["parent"] == searched["run_id"]
    winner = next(t for t in trials if t["run_id"] == searched["search_winner"])
    eligible = [t for t in trials if t["val_accuracy"] is not None and t["cost_ratio"] <= 1.0]
    assert winner["val_accuracy"] == max(t["val_accuracy"] for t in eligible)
    # The search's model is the winner's: same size and architecture in its own record.
    assert searched["arch"] == store.get(winner["run_id"])["record"]["arch"]
    # Test accuracy is read only for the final front, after the search; the trial list never carries it.
    assert all("test_accuracy" not in t for t in trials)
    assert searched["search_front"] and all(t["test_accuracy"] is not None for t in searched["search_front"])
    assert "validation" in searched["search_why"]


def test_selection_ignores_test_accuracy(ws, searched, monkeypatch):
    """The same search with every trial's test accuracy scrambled (each test answer moved to the next class)
    draws the same recipes and chooses the same one: the test split steers nothing."""
    store, base = ws

    def scrambled(self, data, cancelled):
        logits, ys = real(self, data, cancelled)
        return logits.roll(1, dims=1), ys
    real = runtimes.TorchRuntime.predict
    monkeypatch.setattr(runtimes.TorchRuntime, "predict", scrambled)
    again = run_spec(search_spec(base["run_id"]), store)
    first, second = searched["search_trial_list"], again["search_trial_list"]
    assert [t["recipe"] for t in second] == [t["recipe"] for t in first]
    assert [store.get(t["run_id"])["record"]["accuracy"] for t in second] != \
           [store.get(t["run_id"])["record"]["accuracy"] for t in first]
    winner = lambda rec: next(t["recipe"] for t in rec["search_trial_list"] if t["run_id"] == rec["search_winner"])  # noqa: E731
    assert winner(again) == winner(searched)


@pytest.mark.parametrize("objective, target", [("macs", 1e5), ("size", 100.0)])   # 0 pt and 100x smaller
def test_impossible_limit_ends_with_the_closest_trials(ws, objective, target):
    store, base = ws
    rec = run_spec(search_spec(base["run_id"], max_drop_pt=0.0, objective=objective, target=target), store)
    assert rec["search_winner"] is None
    assert rec["search_why"].startswith("no trial met the limit")
    assert rec["search_closest"] and all(t["bound_by"] for t in rec["search_closest"])
    # A target no candidate can reach is refused before training: no trial run was made.
    assert rec["search_killed"] == 2 and all(t["run_id"] is None for t in rec["search_trial_list"])
    assert all("refused before training" in t["why"] for t in rec["search_trial_list"])


@pytest.mark.fast
def test_select_prefers_validation_and_reports_bounds():
    trials = [{"trial": 0, "val_accuracy": 0.9, "drop_pt": 0.5, "cost_ratio": 0.5, "recipe": "a", "why": None},
              {"trial": 1, "val_accuracy": 0.8, "drop_pt": 10.5, "cost_ratio": 0.1, "recipe": "b", "why": None}]
    winner, _ = autocompress.select(trials, limit=1.0, target=None)
    assert winner["trial"] == 0
    winner, closest = autocompress.select(trials, limit=1.0, target=4.0)
    # closeness: points over the limit (9.5) against percent short of the budget (100): trial 1 first
    assert winner is None and [t["trial"] for t in closest] == [1, 0]
    assert "accuracy" in closest[0]["bound_by"] and "budget" in closest[1]["bound_by"]
    assert [t["trial"] for t in autocompress.pareto(trials)] == [1, 0]



@pytest.mark.fast
@pytest.mark.parametrize("drop, says", [(0.004, "kept the start's accuracy (Δ 0.00 pt)"),
                                        (-0.0049, "kept the start's accuracy (Δ 0.00 pt)"),
                                        (0.4321, "lost 0.43 pt (Δ -0.43 pt)"),
                                        (-0.25, "gained 0.25 pt (Δ +0.25 pt)")])
def test_the_winner_sentence_never_says_lost_or_gained_0_pt(drop, says, monkeypatch):
    """The winner's why, as the record keeps it and the search page shows it: accuracies in %, the change in
    signed points, and a change that rounds to 0.00 read as kept."""
    import types

    import optuna
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(
        params={}, distributions={}, value=0.5,
        user_attrs={"recipe": "r", "run_id": "t0", "val_accuracy": 0.9 - drop / 100, "drop_pt": drop,
                    "cost_ratio": 0.5}))
    ctx = types.SimpleNamespace(extra={}, store=types.SimpleNamespace(get=lambda _: None),
                                log=types.SimpleNamespace(warning=lambda *_: None))
    monkeypatch.setattr(autocompress, "_load_winner", lambda ctx, run_id: run_id)
    assert autocompress._conclude(ctx, study, None, base_val=0.9, limit=1.0, target=None,
                                  params={"objective": "size", "parallel": 1, "runtime": "eager", "batch": 1},
                                  where="local", timing=None, judge=None, retime=False) == "t0"
    why = ctx.extra["search_why"]
    assert f"validation accuracy {100 * (0.9 - drop / 100):.2f} % against the start's 90.00 %: {says}" in why
    assert "0.00 pt (Δ" not in why and "-0.00" not in why

def test_killed_search_resumes_without_repeating_a_trial(ws, tmp_path):
    store, base = ws
    spec = tmp_path / "search.json"
    spec.write_text(json.dumps(search_spec(base["run_id"], trials=2, space=["unstructured"], target=None)))
    env = {**os.environ, "SLIMBENCH_HOME": str(store.root), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "engine", "run", str(spec)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    search_id = None
    deadline = time.time() + 300
    try:  # kill the search once its first trial has finished
        while time.time() < deadline and p.poll() is None:
            rows = [r for r in store.list() if (r["spec"] or {}).get("method", {}).get("name") == "autocompress"
                    and r["state"] == "running"]
            if rows:
                search_id = rows[0]["id"]
                kids = [r for r in store.list() if r["parent"] == search_id and r["state"] == "done"]
                if kids:
                    break
            time.sleep(0.5)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert search_id, "the search never finished a trial"
    before = {r["id"] for r in store.list() if r["parent"] == search_id and r["state"] == "done"}
    assert len(before) == 1

    r = subprocess.run([sys.executable, "-m", "engine", "autocompress", "--resume", search_id], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    assert rec["run_id"] == search_id and rec["search_trials"] == 2
    finished = [t for t in rec["search_trial_list"] if t["state"] in ("complete", "pruned")]
    assert len(finished) == 2
    ran = [t["run_id"] for t in finished if t["repeat_of"] is None]
    assert len(ran) == len(set(ran))                          # no run counted twice
    assert before <= set(ran)                                  # the trials done before the kill were kept
    drawn = [json.dumps(t["params"], sort_keys=True) for t in finished if t["repeat_of"] is None]
    assert len(drawn) == len(set(drawn)), drawn               # and no recipe ran twice
    done = {x["id"] for x in store.list() if x["parent"] == search_id and x["state"] == "done"}
    assert done == set(ran)


@pytest.mark.fast
def test_a_trial_whose_fine_tune_ends_past_the_limit_is_stopped_with_why():
    """Optuna's ThresholdPruner sees each phase's last validation score; past limit + margin, the child run
    is told to stop (before INT8, export and timing) and the trial is recorded as pruned, with why."""
    import types

    import optuna

    from engine.errors import Cancelled
    from engine.methods.search_space import Draw
    seen = []

    def run_child(spec, *, run_id, echo, stop):
        echo(phase="finetune:val", epoch=1, epochs=2, val_acc=0.10)   # mid-phase: not judged yet
        seen.append(stop())
        echo(phase="finetune:val", epoch=2, epochs=2, val_acc=0.50)   # 40 pt below: past 1 pt + 3 pt margin
        seen.append(stop())
        raise Cancelled()
    ctx = types.SimpleNamespace(spec=types.SimpleNamespace(name="s", to_dict=dict), progress=lambda **_: None,
                                run_child=run_child)
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(lower=0.90 - (1.0 + 3.0) / 100))
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):
        autocompress._run_trial(ctx, trial, Draw({"name": "prune_unstructured", "params": {}}, "r", {}),
                                base_val=0.90, limit=1.0, key="size_bytes", start_cost=1.0, target=None)
    assert seen == [False, True]
    assert trial.user_attrs["why"].startswith("stopped after its fine-tune") and "40.00 pt" in trial.user_attrs["why"]
    assert "validation accuracy 50.00 %" in trial.user_attrs["why"]         # as the search page writes accuracy


def test_parallel_search_runs_trials_at_once_and_retimes_them_alone(ws):
    """Two trials at once, each in a child process: the budget holds, every trial is a linked run, and with
    objective latency each scored trial's cost is the figure timed again after the search, alone, in the
    runtime and at the batch the search was given (ONNX Runtime, batch 4)."""
    store, base = ws
    rec = run_spec(search_spec(base["run_id"], parallel=2, trials=2, space=["unstructured"], target=None,
                               objective="latency", runtime="onnxruntime", batch=4), store)
    trials = rec["search_trial_list"]
    assert rec["search_parallel"] == 2 and rec["search_where"] == "local"
    assert rec["search_trials"] == len(trials) == 2
    runs = [store.get(t["run_id"]) for t in trials]
    assert all(r["parent"] == rec["run_id"] and r["state"] == "done" for r in runs)
    assert all(r["pid"] != os.getpid() for r in runs)               # each ran in a process of its own
    started = sorted(r["started"] for r in runs)
    assert started[1] < min(r["finished"] for r in runs)             # and the two overlapped
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == 2
    for t in trials:
        assert t["retimed"] and t["runtime"] == "onnxruntime"
        assert t["latency_during_search_ms"] > 0 and t["cost"] > 0 and t["cost_ratio"] > 0
        assert t["cost"] != t["latency_during_search_ms"]            # timed twice: during the search and alone
    assert "timed again" in rec["search_timing"] and "batch 4 in onnxruntime" in rec["search_timing"]
    assert (rec["search_latency_runtime"], rec["search_latency_batch"], rec["search_start_runtime"]) == \
        ("onnxruntime", 4, "onnxruntime")
    assert rec["search_winner"] in {t["run_id"] for t in trials}


@pytest.mark.fast
def test_a_latency_runtime_this_machine_lacks_is_refused_up_front_with_deploys_reason(monkeypatch):
    from engine import deploy
    monkeypatch.setattr(deploy.OpenVino, "available", lambda self, device: "not available on this machine: "
                        "the openvino package is not installed")
    with pytest.raises(SpecError) as e:
        methods.validate("autocompress", {"objective": "latency", "runtime": "openvino"})
    assert e.value.field == "method.params.runtime" and "openvino package is not installed" in str(e.value)
    methods.validate("autocompress", {"objective": "latency", "runtime": "onnxruntime", "batch": 8})
    for params, field in (({"runtime": "onnxruntime"}, "method.params.runtime"), ({"batch": 8}, "method.params.batch")):
        with pytest.raises(SpecError) as e:    # a runtime or batch only the latency objective would use
            methods.validate("autocompress", {"objective": "size", **params})
        assert e.value.field == field


def judge_ctx(model, tmp_path, rounds: int = 1, runs: int = 4):
    """What LatencyJudge reads of a run's context: measure settings, input shape, validation images, the start."""
    import copy
    import types

    import torch
    images = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = types.SimpleNamespace(latency_runs=runs, warmup_runs=1, threads=1, paired_rounds=rounds)
    data = types.SimpleNamespace(loader=lambda split, device, limit=None, batch_size=None: [(images, None)])
    return types.SimpleNamespace(spec=types.SimpleNamespace(measure=cfg), input_shape=(3, 8, 8), run_dir=tmp_path,
                                 log=types.SimpleNamespace(warning=lambda *a: None), data=data,
                                 base_copy=lambda: copy.deepcopy(model))


@pytest.mark.fast
def test_the_latency_judge_times_each_model_in_its_fastest_runtime_at_the_batch(ws, tmp_path, monkeypatch):
    """runtime best: the start's fastest runtime found once (each against eager); then a model is timed in every
    runtime here, each against the start exported to that SAME runtime, at the batch given, and judged in the
    runtime where it ran fastest, with the speed-up paired there (chained to the start's fastest runtime)."""
    import copy

    from engine import export, measure
    from engine.methods.search_latency import LatencyJudge, here
    store, base = ws
    model, _ = export.load_model(store.get(base["run_id"])["record"]["checkpoint"])
    calls = []
    real = measure.paired_speedup

    def spy(ref, cand, *a, batch=1, **kw):
        p = real(ref, cand, *a, batch=batch, **kw)
        calls.append({"batch": batch, "ref": ref, "cand": cand, **p})
        return p
    monkeypatch.setattr(measure, "paired_speedup", spy)
    judge = LatencyJudge(judge_ctx(model, tmp_path), "best", 3)
    trial = copy.deepcopy(model)        # the start's own dense net, as a trial that compressed nothing
    out = judge.time(trial)
    judge.close()
    n = len(here())
    assert n >= 2 and judge.start_runtime in here() and out["runtime"] in here()
    assert all(a >= 0.97 for a in judge.agreement.values()) and not judge.start_refused
    assert {c["batch"] for c in calls} == {3} and len(calls) == (n - 1) + n
    trial_calls = calls[n - 1:]
    for c, rt in zip(trial_calls, out["timed"]):       # every pair: start and trial in one runtime
        assert c["ref"] is judge.start_fns[rt]
        assert out["timed"][rt]["start_runtime"] == rt and c["speedup"] == out["timed"][rt]["speedup"]
    chosen = next(c for c, rt in zip(trial_calls, out["timed"]) if rt == out["runtime"])
    assert out["runtime"] == out["start_runtime"] and chosen["ref"] is judge.start_fns[out["runtime"]]
    assert out["speedup_same_runtime"] == chosen["speedup"]        # the median of that pair's per-round ratios
    # against the start at ITS fastest: that pair chained with the start's own ratio between the two runtimes
    assert out["speedup"] == pytest.approx(chosen["speedup"] * judge.start_speed[out["runtime"]]
                                           / judge.start_speed[judge.start_runtime])
    assert out["latency_ms"] == min(t["latency_ms"] for t in out["timed"].values())
    assert not any(tmp_path.iterdir())                               # its exported models are removed


class _Slow(torch.nn.Module):
    """A model whose call takes at least ``ms`` (so runtimes' speeds are known), answering as ``net``."""

    def __init__(self, net, ms: float):
        super().__init__()
        self.net, self.ms = net, ms

    def forward(self, x):
        time.sleep(self.ms / 1000)
        return self.net(x)


@pytest.mark.fast
def test_a_dense_trial_reads_1x_not_the_runtime_gain_and_a_disagreeing_runtime_is_refused(tmp_path, monkeypatch):
    """Runtimes of known speed (sleep-based): eager 12 ms a call, ONNX Runtime 3 ms (a 4x runtime gain), OpenVINO
    2 ms but answering wrongly. A trial that is the start's dense net is judged in ONNX Runtime against the start
    in ONNX Runtime: ~1x, not 4x; OpenVINO is refused for the start and the trial, its agreement recorded."""
    import copy

    import torch

    from engine import deploy
    from engine.methods import search_latency
    from engine.methods.search_latency import LatencyJudge
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10))
    start = _Slow(net, 12.0)

    def predictor_for(name, model, shape, folder, threads, device="cpu"):
        inner = model.net
        if name == "onnxruntime" and not getattr(inner, "broken", False):
            return _Slow(inner, 3.0)
        return lambda x: (time.sleep(0.002), inner(x).roll(1, dims=1))[1]   # fast, and every answer moved
    monkeypatch.setattr(deploy, "predictor_for", predictor_for)
    monkeypatch.setattr(search_latency, "here", lambda: ["eager", "onnxruntime", "openvino"])
    judge = LatencyJudge(judge_ctx(start, tmp_path, rounds=3, runs=12), "best", 1)
    try:
        assert judge.start_refused["openvino"]["agreement"] < 0.97 and "openvino" not in judge.usable
        assert "agreed with eager on" in judge.start_refused["openvino"]["why"]
        assert judge.agreement["onnxruntime"] == 1.0 and judge.start_runtime == "onnxruntime"
        out = judge.time(_Slow(net, 12.0))
        broken = copy.deepcopy(net)
        broken.broken = True                  # a trial whose ONNX Runtime export answers wrongly
        out_broken = judge.time(_Slow(broken, 12.0))
    finally:
        judge.close()
    assert out["runtime"] == out["start_runtime"] == "onnxruntime"
    assert 0.7 < out["speedup"] < 1.4, out["speedup"]                # the same net: no gain credited to it
    assert out["timed"]["eager"]["speedup"] < 1.4                    # eager against eager: ~1x too
    assert set(out["timed"]) == {"eager", "onnxruntime"} and "openvino" not in out["refused"]   # never offered
    assert out_broken["runtime"] == "eager" and set(out_broken["timed"]) == {"eager"}
    assert out_broken["agreement"]["onnxruntime"] < 0.97 and "onnxruntime" in out_broken["refused"]


def _int8_of(net, tmp_path, fmt="qdq"):
    """A real INT8 model (``quantize.Int8Model``) of ``net`` on 3x8x8 inputs, calibrated on random images."""
    import types

    from engine import export
    from engine.methods import int8_formats
    from engine.methods.quantize import Int8Model
    tmp_path.mkdir(parents=True, exist_ok=True)
    fp32 = tmp_path / "fp32.onnx"
    export.export_onnx(net, (3, 8, 8), fp32)
    batches = [(torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(i)), None) for i in range(2)]
    data = types.SimpleNamespace(loader=lambda split, device, train=False: batches)
    int8_formats.quantize(fp32, tmp_path / "int8.onnx", fmt, data, batches=2)
    return Int8Model((tmp_path / "int8.onnx").read_bytes(), net, fp32.read_bytes(), 1, threads=1, fmt=fmt)


@pytest.mark.fast
def test_an_int8_trial_is_timed_in_every_int8_runtime_against_the_start_there(tmp_path, monkeypatch):
    """runtime best: an INT8 model's ONNX file is timed in ONNX Runtime and in OpenVINO, each paired with the FP32
    start exported to that same runtime, and judged where it is fastest; a runtime whose top-1 disagrees with the
    model's own runtime (where its accuracy was measured) is refused with why. Under eager it is timed in its
    format's own runtime only, against the start exported there."""
    from engine import measure, models
    from engine.methods import int8_formats, search_latency
    from engine.methods.search_latency import LatencyJudge
    if "openvino" not in search_latency.here():
        pytest.skip("OpenVINO does not run here: nothing to time an INT8 file in beside ONNX Runtime")
    net = models.build("resnet20", 10, small_input=True, width=0.25).eval()
    int8 = _int8_of(net, tmp_path / "q")
    calls = []
    real = measure.paired_speedup

    def spy(ref, cand, *a, **kw):
        p = real(ref, cand, *a, **kw)
        calls.append({"ref": ref, "cand": cand, **p})
        return p
    monkeypatch.setattr(measure, "paired_speedup", spy)
    judge = LatencyJudge(judge_ctx(net, tmp_path), "best", 1)
    try:
        calls.clear()
        out = judge.time(int8)
        assert set(out["timed"]) == {"int8 onnxruntime", "int8 openvino"} and not out["refused"]
        assert len(calls) == 2
        for c, name in zip(calls, out["timed"]):     # each paired with the FP32 start in its own runtime
            rt = name.removeprefix("int8 ")
            assert out["timed"][name]["start_runtime"] == rt and c["ref"] is judge.start_fns[rt]
        assert out["runtime"] == min(out["timed"], key=lambda n: out["timed"][n]["latency_ms"])
        assert out["agreement"]["int8 openvino"] >= search_latency.AGREEMENT_MIN
        # The speed-up that counts is against the start at ITS fastest: chained through the start's own ratio.
        won = out["timed"][out["runtime"]]["start_runtime"]
        assert out["vs_start_runtime"] == judge.start_runtime
        assert out["speedup"] == pytest.approx(out["speedup_same_runtime"] * judge.start_speed[won]
                                               / judge.start_speed[judge.start_runtime])

        real_in = int8_formats.runner_in

        def shifted(rt, raw, threads):   # OpenVINO answering every image with another class
            fn = real_in(rt, raw, threads)
            return (lambda x: fn(x).roll(1, dims=1)) if rt == "openvino" else fn
        monkeypatch.setattr(int8_formats, "runner_in", shifted)
        wrong = judge.time(int8)
    finally:
        judge.close()
    assert set(wrong["timed"]) == {"int8 onnxruntime"} and wrong["runtime"] == "int8 onnxruntime"
    assert wrong["agreement"]["int8 openvino"] < search_latency.AGREEMENT_MIN
    assert "agreed with its own runtime (onnxruntime)" in wrong["refused"]["int8 openvino"]["why"]

    eager = LatencyJudge(judge_ctx(net, tmp_path), "eager", 1)
    try:
        assert set(eager.start_fns) == {"eager"}
        home = eager.time(int8)
    finally:
        eager.close()
    assert set(home["timed"]) == {"int8 onnxruntime"} and home["start_runtime"] == "onnxruntime"
    assert not any(tmp_path.glob("search-latency-*"))


@pytest.mark.fast
def test_energy_objective_is_refused_where_it_cannot_be_measured(monkeypatch):
    from engine import conditions
    monkeypatch.setattr(conditions, "RAPL_ROOT", conditions.Path("/nonexistent/powercap"))
    assert "energy" not in autocompress.objectives_here()
    with pytest.raises(SpecError) as e:
        methods.validate("autocompress", {"objective": "energy"})
    assert e.value.field == "method.params.objective"
    assert "energy is not measurable on this machine (no RAPL counter" in str(e.value)


@pytest.mark.fast
def test_energy_objective_is_offered_where_rapl_is_readable(monkeypatch, tmp_path):
    from engine import conditions
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "energy_uj").write_text("1000\n")
    (zone / "max_energy_range_uj").write_text("262143328850\n")
    monkeypatch.setattr(conditions, "RAPL_ROOT", tmp_path)
    assert "energy" in autocompress.objectives_here()
    assert methods.validate("autocompress", {"objective": "energy"})["objective"] == "energy"
    with pytest.raises(SpecError) as e:   # the package counter would count the other trials' training
        methods.validate("autocompress", {"objective": "energy", "parallel": 2})
    assert e.value.field == "method.params.parallel"
    assert autocompress.OBJECTIVES["energy"] == "energy_mj_per_image"


@pytest.mark.xdist_group("ray")  # one local Ray head at a time (tests/test_ray.py starts one too)
def test_a_parallel_search_runs_its_trials_as_ray_tasks(ws, monkeypatch):
    """Under SLIMBENCH_BACKEND=ray, against a real local Ray head (2 CPUs, as tests/test_ray.py starts it): two
    trials at once as Ray tasks, each a linked child run in the shared workspace, the budget kept, no recipe
    run twice."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install -r requirements-ray.txt)")
    store, base = ws
    head = ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=80 * 1024**2,
                    configure_logging=False, log_to_driver=False)
    try:
        monkeypatch.setenv("SLIMBENCH_BACKEND", "ray")
        monkeypatch.setenv("RAY_ADDRESS", head.address_info["gcs_address"])
        rec = run_spec(search_spec(base["run_id"], parallel=2, trials=2, space=["unstructured"], seed=1), store)
    finally:
        ray.shutdown()
    trials = rec["search_trial_list"]
    assert rec["search_where"] == "ray" and rec["search_parallel"] == 2
    assert rec["search_trials"] == len(trials) == 2
    rows = [store.get(t["run_id"]) for t in trials]
    assert all(r["state"] == "done" and r["parent"] == rec["run_id"] for r in rows)
    assert all(r["pid"] != os.getpid() for r in rows)       # run in Ray worker processes
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == 2
    assert rec["search_winner"] in {t["run_id"] for t in trials}


@pytest.mark.fast
def test_a_cancelled_parallel_search_kills_its_running_trials(tmp_path):
    """Cancelled while two trials run: both trial processes are killed, their runs end cancelled, and the
    journal records both trials failed with why (a resume then runs them again)."""
    import types

    import optuna

    from engine.errors import Cancelled
    from engine.methods import parallel_trials
    from engine.methods.search_space import Draw
    store = Store(tmp_path)
    killed, polls = [], [0]

    class Handle:
        def __init__(self, run_id):
            self.run_id = run_id

        def poll(self):
            polls[0] += 1
            return None

        def kill(self):
            killed.append(self.run_id)

    def start_child(spec, *, run_id, threads):
        store.create(spec, state="running", run_id=run_id)
        return Handle(run_id)
    ctx = types.SimpleNamespace(store=store, start_child=start_child, progress=lambda **_: None,
                                cancelled=lambda: polls[0] >= 2)
    study = optuna.create_study()

    def prepare(trial):
        trial.suggest_float("x", 0, 1)
        return Draw({"name": "baseline", "params": {}}, "r", {})
    with pytest.raises(Cancelled):
        parallel_trials.run(ctx, study, parallel=2, threads=1, budget=4, left=4, timeout=None, prepare=prepare,
                            spec_of=lambda t, d: {"method": d.method}, score=lambda t, r: 0.0,
                            describe_stop=str, spent=lambda: None)
    trials = study.get_trials()
    assert len(trials) == 2 and all(t.state == optuna.trial.TrialState.FAIL for t in trials)
    assert all(t.user_attrs["why"] == "stopped with the search" for t in trials)
    assert sorted(killed) == sorted(t.user_attrs["run_id"] for t in trials)
    assert all(store.get(r)["state"] == "cancelled" for r in killed)


@pytest.mark.fast
def test_a_resumed_parallel_search_adopts_a_finished_run_and_never_repeats_a_recipe(tmp_path):
    """Resume in parallel: the interrupted trial whose run had finished is scored from that run (no child
    started), and a recipe a finished trial ran is taken from it, not run again."""
    import types

    import optuna

    from engine.methods import parallel_trials
    from engine.methods.search_space import Draw
    store = Store(tmp_path)
    done = store.create({"method": {"name": "baseline"}}, state="done")
    store.update(done, record={"run_id": done, "size_bytes": 7})
    started = []
    ctx = types.SimpleNamespace(store=store, progress=lambda **_: None, cancelled=lambda: False,
                                start_child=lambda spec, **kw: started.append(kw["run_id"]))
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial({"x": 0.25}, user_attrs={"adopt_run": done})
    study.enqueue_trial({"x": 0.25})     # the same recipe again, once the first has finished

    def prepare(trial):
        trial.suggest_float("x", 0, 1)
        twin = next((t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
                     if t.params == trial.params), None)
        return twin.value if twin else Draw({"name": "baseline", "params": {}}, "r", {})
    parallel_trials.run(ctx, study, parallel=1, threads=1, budget=2, left=2, timeout=None, prepare=prepare,
                        spec_of=lambda t, d: {}, score=lambda t, record: float(record["size_bytes"]),
                        describe_stop=str, spent=lambda: None)
    trials = study.get_trials()
    assert [t.value for t in trials] == [7.0, 7.0] and trials[0].user_attrs["run_id"] == done
    assert started == []                  # nothing ran: one adopted, one a repeat


def test_a_killed_parallel_search_resumes_keeping_its_finished_trials_and_repeating_none(ws, tmp_path):
    """A parallel search killed (SIGKILL) once a trial has finished, then resumed: the finished trial is kept,
    no recipe runs twice, and the trial that was running is adopted (its run had finished) or failed with why,
    its run ended cancelled: no child run is left running."""
    store, base = ws
    spec = tmp_path / "search.json"
    spec.write_text(json.dumps(search_spec(base["run_id"], trials=2, parallel=2, space=["unstructured"], target=None,
                                           seed=5)))
    env = {**os.environ, "SLIMBENCH_HOME": str(store.root), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "engine", "run", str(spec)], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    search_id, deadline = None, time.time() + 300
    try:  # kill the search once one of its two trials has finished
        while time.time() < deadline and p.poll() is None:
            rows = [r for r in store.list() if (r["spec"] or {}).get("method", {}).get("name") == "autocompress"
                    and r["state"] == "running" and (r["spec"]["method"]["params"].get("parallel") == 2)]
            if rows:
                search_id = rows[0]["id"]
                if any(r["parent"] == search_id and r["state"] == "done" for r in store.list()):
                    break
            time.sleep(0.3)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert search_id, "the search never finished a trial"
    before = {r["id"] for r in store.list() if r["parent"] == search_id and r["state"] == "done"}
    assert before

    r = subprocess.run([sys.executable, "-m", "engine", "autocompress", "--resume", search_id], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    assert rec["run_id"] == search_id and rec["search_trials"] == 2 and rec["search_parallel"] == 2
    finished = [t for t in rec["search_trial_list"] if t["state"] in ("complete", "pruned")]
    ran = [t["run_id"] for t in finished if t["repeat_of"] is None]
    assert len(finished) == 2 and len(ran) == len(set(ran))          # no run counted twice
    assert before <= set(ran)                                          # the trials done before the kill were kept
    drawn = [json.dumps(t["params"], sort_keys=True) for t in finished if t["repeat_of"] is None]
    assert len(drawn) == len(set(drawn)), drawn                        # and no recipe ran twice
    interrupted = [t for t in rec["search_trial_list"] if t["state"] == "fail"]
    assert all(t["why"].startswith("interrupted") for t in interrupted)
    kids = [x for x in store.list() if x["parent"] == search_id]
    assert not [x for x in kids if x["state"] == "running"]            # none left running as an orphan
    assert {x["id"] for x in kids if x["state"] == "done"} == set(ran)
    for t in interrupted:   # its run: adopted (it had finished) or ended cancelled with why
        row = store.get(t["run_id"])
        assert row["id"] in ran or (row["state"] == "cancelled" and "interrupted" in row["error"])


@pytest.mark.fast
def test_a_trial_run_whose_search_died_stops_itself_and_says_why(tmp_path):
    """A trial started apart (a process or a Ray task) watches its search: once the search's row is silent past
    SLIMBENCH_STALE_S (its process killed) or ended, the trial stops and records why, not an orphan run."""
    from engine import runner
    store = Store(tmp_path)
    search = store.create({"method": {"name": "autocompress"}}, state="running")
    store.update(search, heartbeat=time.time())
    assert not runner._StoreCancelled(store, "none", search)()        # a live search: the trial runs on
    store.update(search, heartbeat=time.time() - 60)
    halt = runner._StoreCancelled(store, "none", search)
    assert halt() and "no heartbeat for 60 s" in halt.why and "orphan" in halt.why
    child = store.create({"data": DATA, "model": {"arch": "resnet18"}, "method": {"name": "baseline"},
                          "train": {"epochs": 1}, "measure": MEASURE}, state="running", parent=search)
    assert runner._child_entry(str(store.root), child, search, 1) == 1
    row = store.get(child)
    assert row["state"] == "cancelled" and f"its search {search} stopped" in row["error"]
    store.update(search, state="cancelled")
    halt = runner._StoreCancelled(store, "none", search)
    assert halt() and "ended (cancelled)" in halt.why


def test_cheap_proxies_first_then_the_best_gets_the_full_recipe(ws, first_int8_format):
    """The plain INT8 of the start is tried first; after the short-fine-tune trials, the best tunable one is run
    again with the full recipe (full_epochs), inside the same trial budget, and both are on the trial list."""
    store, base = ws
    rec = run_spec(search_spec(base["run_id"], trials=3, promote=1, full_epochs=2, target=None,
                               space=["quantize_int8", "unstructured"]), store)
    trials = rec["search_trial_list"]
    assert rec["search_trials"] == len(trials) == 3
    first = trials[0]
    assert first["params"] == {"candidate": "quantize_int8"} and first["val_accuracy"] is not None
    assert store.get(first["run_id"])["record"]["method"] == "quantize_int8"
    promoted = [t for t in trials if t["promoted_from"] is not None]
    assert len(promoted) == 1
    full, = promoted
    proxy = trials[full["promoted_from"]]
    assert proxy["params"]["candidate"] == "unstructured" and full["params"] == proxy["params"]
    assert full["trial"] > proxy["trial"] and "full recipe of trial" in full["recipe"]
    method = lambda t: store.get(t["run_id"])["spec"]["method"]["params"]  # noqa: E731
    assert method(proxy)["finetune_epochs"] == 1 and method(full)["finetune_epochs"] == 2


def test_a_seeded_recipe_runs_first_with_its_full_fine_tune(ws, first_int8_format):
    """seeded (the default): the measured recipe (search_space.SEEDS[0]: structured to 1/2.1 of the MACs -> INT8)
    is the first trial of a space holding its candidate, with full_epochs and no KD, saying what it was seeded on,
    and is never promoted; a seed the budget leaves no room for stays queued, unrun."""
    from engine.methods.search_space import SEEDS
    store, base = ws
    rec = run_spec(search_spec(base["run_id"], trials=1, promote=0, full_epochs=2, target=None,
                               space=["prune_int8"]), store)
    trials = rec["search_trial_list"]
    ran = [t for t in trials if t["state"] in ("complete", "pruned")]
    assert rec["search_trials"] == len(ran) == 1
    seeded, = ran
    assert seeded["params"] == SEEDS[0].params and seeded["seeded"] == SEEDS[0].why
    assert "(seeded: " in seeded["recipe"] and seeded["val_accuracy"] is not None and seeded["promoted_from"] is None
    step = store.get(seeded["run_id"])["spec"]["method"]["params"]["steps"][0]
    assert step["name"] == "prune_structured" and step["params"]["finetune_epochs"] == 2
    assert not step["params"].get("finetune_kd") and abs(step["params"]["target_macs"] - 1 / 2.1) < 1e-9
    assert all(t["state"] == "waiting" and t["run_id"] is None for t in trials if t not in ran)


@pytest.mark.fast
def test_aligned_seed_is_run_for_latency_only_and_its_draw_asks_for_round_to():
    """The aligned cut (round_to 8) is seeded into latency searches only, and a drawn round_to reaches the
    structured step's params (1: no round_to key, so the method keeps its own default)."""
    import optuna

    from engine.methods.search_space import ALIGN, SEEDS, draw, seeds_for
    space = ["prune_int8", "quantize_int8"]
    aligned = [s for s in SEEDS if s.params.get("prune.round_to", 1) > 1]
    assert aligned and all(s in seeds_for("latency", space) for s in aligned)
    assert not any(s in seeds_for("size", space) for s in aligned)
    assert seeds_for("latency", ["quantize_int8"]) == []          # a candidate left out of space is not seeded
    assert 1 in ALIGN and 8 in ALIGN

    def step(align):
        t = optuna.trial.FixedTrial({"candidate": "prune_int8", "prune.target_macs": 0.4, "prune.round_to": align})
        d = draw(t, "prune_int8", 2, 1e6, 1e5, 10, (1, 16, 16), True)
        return d.method["params"]["steps"][0]["params"], d.recipe
    p8, r8 = step(8)
    p1, r1 = step(1)
    assert p8["round_to"] == 8 and "multiples of 8" in r8
    assert "round_to" not in p1 and "multiples" not in r1


@pytest.mark.fast
def test_block_pruning_candidate_chains_int8_and_its_seed_keeps_its_own_epochs():
    """blocks_int8 draws prune_blocks at a MAC share -> INT8 with no pre-training proxy (whole blocks: the share is
    known after the cut); a seed naming its epochs (the block cut's measured 8) carries them."""
    import optuna

    from engine.methods.search_space import SEEDS, draw
    t = optuna.trial.FixedTrial({"candidate": "blocks_int8", "blocks.target_macs": 0.31})
    d = draw(t, "blocks_int8", 5, 1e6, 1e5, 10, (3, 16, 16), True, kd=0.9)
    blocks, int8 = d.method["params"]["steps"]
    assert blocks["name"] == "prune_blocks" and int8["name"] == "quantize_int8" and d.proxy == {}
    assert blocks["params"] == {"target_macs": 0.31, "finetune_epochs": 5, "finetune_kd": 0.9}
    seed = next(s for s in SEEDS if s.params["candidate"] == "blocks_int8")
    assert seed.epochs and seed.epochs > 3 and f"{seed.epochs} fine-tune epochs" in seed.why


def test_a_seed_with_its_own_epochs_runs_them(ws, first_int8_format):
    """The block-pruning seed runs first in a space holding its candidate, with its own fine-tune epochs (not
    full_epochs), and its child run's model is shallower than the start."""
    from engine.methods.search_space import SEEDS
    seed = next(s for s in SEEDS if s.params["candidate"] == "blocks_int8")
    store, base = ws
    rec = run_spec(search_spec(base["run_id"], trials=1, promote=0, full_epochs=2, target=None,
                               space=["blocks_int8"]), store)
    ran, = [t for t in rec["search_trial_list"] if t["state"] in ("complete", "pruned")]
    assert ran["params"] == seed.params and ran["seeded"] == seed.why
    child = store.get(ran["run_id"])
    step = child["spec"]["method"]["params"]["steps"][0]
    assert step["name"] == "prune_blocks" and step["params"]["finetune_epochs"] == seed.epochs != 2
    assert child["record"]["macs"] < base["macs"]
