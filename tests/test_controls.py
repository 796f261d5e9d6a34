"""Controls (issue 19 item 2): a compressed run beside its family scaled to its MACs and trained from scratch
with the same epoch budget, compared on the same test images; refusals before training; the presets helper."""
from __future__ import annotations

import pandas as pd
import pytest

from engine import measure, models, presets
from engine.errors import JobFailed
from engine.methods import control
from engine.runner import run_spec
from engine.spec import SpecError
from engine.store import Store

DATA = {"name": "digits", "limit": 300, "test_limit": 150, "batch_size": 32}
MEASURE = {"onnx": False, "deploy": False, "latency_runs": 3, "warmup_runs": 1, "batch_size": 8, "paired_rounds": 0}


def spec(model: dict, method: str, params: dict, epochs: int = 1) -> dict:
    return {"data": DATA, "model": model, "method": {"name": method, "params": params},
            "train": {"epochs": epochs}, "measure": MEASURE}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A digits ResNet-20 base (2 epochs), pruned to about half its MACs (1 fine-tune epoch), and its control."""
    store = Store(tmp_path_factory.mktemp("controls") / "ws")
    base = run_spec(spec({"arch": "resnet20"}, "baseline", {}, epochs=2), store)
    pruned = run_spec(spec({"from_run": base["run_id"]}, "prune_structured", {"ratio": 0.3, "finetune_epochs": 1}),
                      store)
    ctrl = run_spec(spec({"from_run": base["run_id"]}, "control", {"of_run": pruned["run_id"]}), store)
    return store, base, pruned, ctrl


def test_control_matches_the_runs_macs_and_budget_and_records_the_paired_verdict(chain):
    store, base, pruned, ctrl = chain
    assert pruned["macs"] < 0.8 * base["macs"]
    assert abs(ctrl["macs"] / pruned["macs"] - 1) <= control.TOLERANCE
    assert ctrl["control_of"] == pruned["run_id"] and ctrl["arch"] == ctrl["control_arch"]
    assert ctrl["control_arch"].startswith("resnet") and 0 < ctrl["control_width"] < 1
    # the budget: the base's 2 epochs + the pruned run's 1 fine-tune epoch, all trained from scratch here
    assert ctrl["control_epochs"] == 3 and [h["phase"] for h in ctrl["history"]] == ["train"] * 3
    assert f"{base['run_id']} (baseline) 2" in ctrl["control_epochs_counted"]
    # the compressed model scored in the control's job on the same images as in its own job
    assert ctrl["control_of_accuracy"] == pytest.approx(pruned["accuracy"])
    assert ctrl["control_delta_pt"] == pytest.approx(100 * (pruned["accuracy"] - ctrl["accuracy"]))
    lo, hi = ctrl["control_delta_ci95_pt"]
    assert -100 <= lo <= hi <= 100 and 0 <= ctrl["control_mcnemar_p"] <= 1
    # its start is the run's start, so its Δ accuracy sits in the same base-relative table
    assert ctrl["parent"] == base["run_id"]


def test_control_refuses_a_run_that_is_no_architectural_compression_before_training(chain):
    store, base, pruned, _ = chain
    unstructured = run_spec(spec({"from_run": base["run_id"]}, "prune_unstructured", {"finetune_epochs": 0}), store)
    for run in (base, unstructured):
        with pytest.raises(JobFailed) as e:
            run_spec(spec({"from_run": base["run_id"]}, "control", {"of_run": run["run_id"]}), store)
        assert isinstance(e.value.__cause__, SpecError) and e.value.__cause__.field == "method.params.of_run"
        assert "a control is trained for structured pruning" in str(e.value)
        failed = [r for r in store.list("failed") if r["spec"]["method"]["params"].get("of_run") == run["run_id"]][0]
        assert not [ev for ev in store.events(failed["id"]) if ev.get("phase") == "train"]  # refused before training


def test_control_refuses_other_data(chain):
    store, base, pruned, _ = chain
    other = spec({"from_run": base["run_id"]}, "control", {"of_run": pruned["run_id"]})
    other["data"] = {**DATA, "limit": 200}
    with pytest.raises(JobFailed) as e:
        run_spec(other, store)
    assert e.value.__cause__.field == "data.limit"


@pytest.mark.fast
def test_width_search_lands_within_tolerance_and_refuses_archs_without_width():
    shape = (3, 32, 32)
    for arch, share in (("resnet56", 0.47), ("resnet18", 0.5)):   # resnet18: _WidthResNet
        target = int(share * control.dense_macs(arch, 1.0, 10, True, shape))
        a, w, macs = control.match_macs(arch, target, 10, True, shape)
        assert abs(macs / target - 1) <= control.TOLERANCE
        assert macs == measure.count_macs(models.build(a, 10, True, w), shape)["macs"]  # what the record measures
    with pytest.raises(SpecError) as e:
        control.match_macs("resnet34", 10**6, 10, True, shape)
    assert e.value.field == "method.params.of_run" and "no width multiplier" in str(e.value)


@pytest.mark.fast
def test_cifar_resnets_fall_back_on_depth_nearest_first():
    assert control.candidates("resnet56") == ["resnet56", "resnet32", "resnet20", "resnet14", "resnet8",
                                                "resnet110"]
    assert control.candidates("mobilenet_v2_cifar") == ["mobilenet_v2_cifar"]


@pytest.mark.fast
def test_which_results_get_a_control():
    ok = [{"name": n} for n in ("prune_structured", "soft_filter_pruning", "slimming", "lowrank_svd", "factorize",
                                "distill")]
    no = [{"name": n} for n in ("baseline", "prune_unstructured", "sensitivity", "compact", "quantize_int8", "half")]
    assert all(control.controllable(m) for m in ok) and not any(control.controllable(m) for m in no)
    prune_then_int8 = {"name": "pipeline", "params": {"steps": [{"name": "prune_structured"}, {"name": "quantize_int8"}]}}
    prune_then_half = {"name": "pipeline", "params": {"steps": [{"name": "prune_structured"}, {"name": "half"}]}}
    assert not control.controllable(prune_then_int8) and control.controllable(prune_then_half)


@pytest.mark.fast
def test_with_controls_appends_a_control_after_each_controllable_job_and_launch_resolves_of_run():
    plan = presets.custom_plan(data=DATA, model={"arch": "resnet20"}, base_train={"epochs": 1}, train={"epochs": 1},
                               measure=MEASURE, steps=[("prune_structured", [{"ratio": 0.3}, {"ratio": 0.5}]),
                                                       ("prune_unstructured", [{}])])
    out = presets.with_controls(plan)
    assert [s["method"]["name"] for s in out] == ["baseline", "prune_structured", "prune_structured",
                                                  "prune_unstructured", "control", "control"]
    controls = out[4:]
    assert [c["method"]["params"]["of_run"] for c in controls] == [presets.ref(1), presets.ref(2)]
    assert all(c["model"] == out[1]["model"] and c["data"] == out[1]["data"] for c in controls)
    resolved = presets.resolve(out, [f"20260101-00000{i}-aaaaaa" for i in range(len(out))])
    assert [c["method"]["params"]["of_run"] for c in resolved[4:]] == ["20260101-000001-aaaaaa",
                                                                       "20260101-000002-aaaaaa"]
    assert resolved[4]["model"]["from_run"] == "20260101-000000-aaaaaa"
    # a plan whose pruning job is invalid drops its control too, and renumbers the refs of the rest
    out[1]["method"]["params"]["ratio"] = 5.0
    ok, problems = presets.check(out)
    assert [s["method"]["name"] for s in ok] == ["baseline", "prune_structured", "prune_unstructured", "control"]
    assert ok[3]["method"]["params"]["of_run"] == presets.ref(1)
    assert any("control of" in p and "it is a control of is invalid" in p for p in problems)


# -- Compare: the verdict and the literature (synthetic records) ----------------------------------------------
def insert_controlled_study(home) -> None:
    """A CIFAR-10 ResNet-56 base 3.5 pt below the published one, a pruned child 2.1x fewer MACs, its control
    (which the pruned run beats, paired), and a factorised child whose control it does not beat."""
    store = Store(home)
    common = {"arch": "resnet56", "dataset": "cifar10", "num_classes": 10, "test_images": 10000, "test_set_hash": "h",
              "size_bytes": 3_400_000}
    recs = [
        {"run_id": "base", "name": "base", "method": "baseline", "parent": None, "accuracy": 0.9003, "macs": 125_485_706},
        {"run_id": "pruned", "name": "pruned", "method": "prune_structured", "parent": "base", "accuracy": 0.8990,
         "start_accuracy": 0.9003, "macs": 59_000_000},
        {"run_id": "ctl-pruned", "name": "control of pruned", "method": "control", "parent": "base", "accuracy": 0.8810,
         "start_accuracy": 0.9003, "macs": 60_100_000, "control_of": "pruned", "control_delta_pt": 1.8,
         "control_delta_ci95_pt": [1.2, 2.4], "control_mcnemar_p": 1e-6, "control_of_accuracy": 0.8990},
        {"run_id": "fact", "name": "fact", "method": "factorize", "parent": "base", "accuracy": 0.8700,
         "start_accuracy": 0.9003, "macs": 70_000_000},
        {"run_id": "ctl-fact", "name": "control of fact", "method": "control", "parent": "base", "accuracy": 0.8720,
         "start_accuracy": 0.9003, "macs": 69_000_000, "control_of": "fact", "control_delta_pt": -0.2,
         "control_delta_ci95_pt": [-0.9, 0.5], "control_mcnemar_p": 0.6, "control_of_accuracy": 0.8700},
    ]
    for i, r in enumerate(recs):
        store.create({"name": r["name"], "data": {"name": "cifar10"}, "model": {"arch": "resnet56"},
                      "method": {"name": r["method"], "params": {}}}, state="done", run_id=r["run_id"],
                      parent=r["parent"], created=1000.0 + i)
        store.update(r["run_id"], record={**common, **r, "finished": 1000.0 + i}, finished=1000.0 + i)


@pytest.mark.fast
def test_results_table_words_each_runs_verdict_against_its_control(home):
    from engine import results
    insert_controlled_study(home)
    df = results.table(results.records(Store(home))).set_index("run_id")
    assert df.loc["pruned", "control_verdict"] == "beats its control by 1.8 pt (95 % CI +1.2 to +2.4 pt, control ctl-pruned)"
    assert df.loc["fact", "control_verdict"].startswith("does not beat its control: -0.2 pt, within test-set noise")
    assert df.loc["ctl-pruned", "control_verdict"] == "control of pruned"
    assert pd.isna(df.loc["base", "control_verdict"])
    # beside the verdict: the published pruned − scratch figure for a structured cut, none for a factorised one
    assert "Liu et al. 2019" in results.control_counterpart("prune_structured", df.loc["pruned", "x_fewer_macs"])
    assert results.control_counterpart("factorize", df.loc["fact", "x_fewer_macs"]) is None
    pts = results.literature_points(df.reset_index())
    assert set(pts["net"]) == {"resnet56"} and len(pts) >= 5
    assert (pts["macs"] * pts["mac_reduction"]).round().eq(125_485_706).all()
    assert results.literature_gaps(df.reset_index())[0].startswith("base base (resnet56 on cifar10, 90.03 %) is 4.3 pt")


@pytest.mark.fast
def test_compare_shows_the_control_verdict_and_the_published_points(tmp_path, monkeypatch):
    from conftest import compare_page, plain
    at = compare_page(tmp_path / "ws", monkeypatch, insert_controlled_study)
    at.radio(key="axis").set_value("MACs")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value.set_index("run_id")
    assert table.loc["pruned", "control_verdict"].startswith("beats its control by 1.8 pt")
    chart = next(str(c.proto.spec) for c in at.get("plotly_chart") if "published (literature)" in str(c.proto.spec))
    assert "DepGraph" in chart and "from a base of" in chart
    assert "4.3 pt below the published base (94.37 %)" in "\n".join(plain(str(w.value)) for w in at.warning)
    at.selectbox(key="detail_run").set_value("pruned")
    at.run()
    verdict = "\n".join(plain(str(s.value)) for s in at.success)
    assert "Against its control" in verdict and "Liu et al. 2019" in verdict and "pruned − scratch" in verdict
    at.selectbox(key="detail_run").set_value("fact")
    at.run()
    assert "does not beat its control" in "\n".join(plain(str(s.value)) for s in at.info)
