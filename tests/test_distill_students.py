"""distill and compact train the requested student; a distilled run teaches the next one; bad params named."""
from __future__ import annotations

import pytest

from engine import export, measure, models
from engine.runner import run_spec
from engine.spec import JobSpec, SpecError
from engine.store import Store
from engine.validation import check_spec

from conftest import adopt_run

DATA = {"name": "digits", "limit": 200, "test_limit": 100, "batch_size": 32}
MEASURE = {"onnx": False, "deploy": False, "paired_rounds": 0, "latency_runs": 3, "warmup_runs": 1, "batch_size": 8}


def spec(model: dict, method: str, params: dict) -> JobSpec:
    return check_spec({"data": DATA, "model": model, "method": {"name": method, "params": params},
                       "train": {"epochs": 1}, "measure": MEASURE})


@pytest.fixture()
def started(tmp_path, small_base):
    """A fresh workspace holding the session's small trained ResNet-18 (conftest): (store, its record)."""
    store = Store(tmp_path / "ws")
    return store, adopt_run(*small_base, store)


def test_distill_and_compact_train_the_requested_student_and_chain(started):
    store, base = started
    student = "mobilenet_v3_small"
    n_params = measure.count_params(models.build(student, 10, True))
    kd = run_spec(spec({"from_run": base["run_id"]}, "distill", {"student": student, "epochs": 1}), store)
    plain = run_spec(spec({"from_run": base["run_id"]}, "compact", {"student": student, "epochs": 1}), store)
    for r, phase in ((kd, "distill"), (plain, "train")):
        assert r["arch"] == student and r["params"] == n_params < base["params"]
        assert [h["phase"] for h in r["history"]] == [phase]
    assert kd["teacher_run"] == base["run_id"]
    # Chain: the distilled run teaches the next student (its bundle rebuilds as the student arch).
    nxt = run_spec(spec({"from_run": kd["run_id"]}, "distill", {"student": "shufflenet_v2_x1_0", "epochs": 1,
                                                               "teacher": kd["run_id"], "loss": "mse_ce"}), store)
    assert nxt["arch"] == "shufflenet_v2_x1_0" and nxt["teacher_run"] == kd["run_id"]
    # compact needs no trained model: the same student from scratch, launchable from a bare arch.
    fresh = run_spec(spec({"arch": "resnet18"}, "compact", {"student": student, "epochs": 1}), store)
    assert fresh["arch"] == student and fresh["params"] == n_params


@pytest.mark.parametrize("params, field", [
    ({"student": "resnet9000"}, "method.params.student"),
    ({"loss": "l1"}, "method.params.loss"),
    ({"T": 0}, "method.params.T"),
    ({"alpha": 1.5}, "method.params.alpha"),
    ({"teacher": "../etc"}, "method.params.teacher"),
    ({"epochs": 0}, "method.params.epochs"),
    ({"width": 0}, "method.params.width"),
    ({"student": "resnet34", "width": 0.5}, "method.params.width"),   # resnet18 has a width (controls)
])
def test_bad_distill_params_name_the_field(params, field):
    with pytest.raises(SpecError) as e:
        spec({"from_run": "20260101-000000-abcdef"}, "distill", params)
    assert e.value.field == field


def test_width_multiplier_shrinks_the_student_and_its_bundle_rebuilds_it(started):
    store, base = started
    full = measure.count_params(models.build("mobilenet_v2", 10, True))
    half = run_spec(spec({"from_run": base["run_id"]}, "distill", {"student": "mobilenet_v2", "width": 0.5,
                                                                  "epochs": 1}), store)
    assert half["arch"] == "mobilenet_v2" and half["params"] < 0.5 * full
    model, bundle = export.load_model(half["checkpoint"])  # rebuilt at width 0.5, weights load strictly
    assert bundle["arch_kwargs"]["width"] == 0.5 and measure.count_params(model) == half["params"]
