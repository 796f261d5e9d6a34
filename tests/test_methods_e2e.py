"""lowrank_svd, quantize_int8 and runtime end to end through the CLI on tiny digits runs, and bad
params named (pipeline, distill/compact and bundle reloading: tests/test_pipeline.py,
tests/test_distill_students.py)."""
from __future__ import annotations

import pytest
import torch

from engine import export, measure, models

from conftest import run_here

# No export to every runtime and batch-8 throughput: these tests read what a method did, not deployment. The
# INT8 run keeps paired rounds (its tests read its paired speed-ups); lowrank and runtime need none.
FAST = {"onnx": False, "deploy": False, "latency_runs": 3, "warmup_runs": 1, "batch_size": 8, "paired_rounds": 2}
UNPAIRED = {**FAST, "paired_rounds": 0}
DATA = {"name": "digits", "limit": 200}


def spec(base_id: str, method: str, params: dict | None = None, measure: dict = FAST, **extra) -> dict:
    return {"data": DATA, "model": {"from_run": base_id}, "method": {"name": method, "params": params or {}},
            "train": {"epochs": 1}, "measure": measure, **extra}


@pytest.fixture(scope="module")
def runs(tiny_base, session_home):
    b = tiny_base["run_id"]
    out = {"base": tiny_base}
    out["lowrank"] = run_here(spec(b, "lowrank_svd", {"route": "svd_reg", "rank_ratio": 0.25, "orthogonal_reg": 0.01, "sv_sparsity": 1e-4,
                                                      "reg_epochs": 1, "finetune_epochs": 1}, UNPAIRED), session_home)
    out["int8"] = run_here(spec(b, "quantize_int8", {"calibration_batches": 2}), session_home)
    return out


def test_lowrank_lowers_params_and_macs_by_the_predicted_amount(runs):
    r, base = runs["lowrank"], runs["base"]
    assert r["lowrank_layers"] and r["params"] == base["params"] - r["lowrank_params_saved"]
    assert r["macs"] == base["macs"] - r["lowrank_macs_saved"] > 0
    assert any(h["phase"] == "lowrank-regularised" for h in r["history"])


def test_int8_file_is_small_and_measured_on_int8(runs):
    r, base = runs["int8"], runs["base"]
    assert r["size_bytes"] <= 0.3 * base["size_bytes"] and r["onnx_bytes"] <= 0.3 * r["fp32_onnx_bytes"]
    assert r["precision"] == "int8" and r["latency_ms"] > 0 and r["fp32_onnx_latency_ms"] > 0
    assert r["int8_speedup_range"][0] <= r["int8_speedup"] <= r["int8_speedup_range"][1]
    # paired_speedup means one thing in every record, x faster than its start in the same runtime: for INT8,
    # against its start in fp32 under ONNX Runtime; the eager PyTorch start has a key of its own
    assert r["paired_speedup"] == r["int8_speedup"] and r["paired_speedup_range"] == r["int8_speedup_range"]
    assert r["speedup_vs_eager_start"] > 0 and r["paired_ref"] == base["run_id"]
    assert "activation_peak_bytes" not in r and r["latency_device"] == "cpu"   # ONNX Runtime allocates outside torch
    assert r["onnx_bytes"] < r["fp32_onnx_bytes"] and 0 < r["compressed_bytes"] <= r["size_bytes"] * 1.01
    assert 0.0 < r["accuracy"] <= 1.0 and sum(map(sum, r["confusion"])) == r["test_images"]
    assert r["quantization"]["preprocessed"] is True  # BN folded before quantising; a failure is recorded


def test_int8_records_a_failed_preprocessing_instead_of_hiding_it(tmp_path, monkeypatch):
    import onnxruntime.quantization.shape_inference as si

    from engine import data as D
    from engine.methods.quantize import quantize_onnx
    from engine.spec import DataSpec

    def broken(*a, **k):
        raise RuntimeError("no shape for you")
    monkeypatch.setattr(si, "quant_pre_process", broken)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 10)).eval()
    export.export_onnx(net, (3, 8, 8), tmp_path / "fp32.onnx")
    why = quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", D.load(DataSpec(name="digits", limit=64)),
                        1, "qdq", True)
    assert why == "RuntimeError: no shape for you" and (tmp_path / "int8.onnx").stat().st_size > 0


@pytest.mark.parametrize("name", ["lowrank", "int8"])
def test_each_run_meets_its_start_on_the_same_test_images(runs, name):
    r, base = runs[name], runs["base"]
    # Same test images, and the start normalised as it was trained (this job's data.limit differs from
    # the base's, which once shifted its inputs): the start scores exactly what its own job recorded.
    one = 0.1 / r["test_images"]                     # far below one image
    assert r["test_images"] == base["test_images"]
    assert r["start_accuracy"] == pytest.approx(base["accuracy"], abs=one)
    assert r["start_per_class_accuracy"] == pytest.approx(base["per_class_accuracy"], abs=one)
    assert r["accuracy"] - r["start_accuracy"] == pytest.approx(r["flips_to_right"] - r["flips_to_wrong"], abs=one)
    assert r["flips_to_right"] + r["flips_to_wrong"] <= 1 - r["agreement"] + one   # a flip changes the answer
    assert "agreement" not in base                    # a fresh architecture starts from nothing
    # How sure: the accuracy's interval holds it; the paired interval of the difference holds the difference.
    for rec in (r, base):
        lo, hi = rec["accuracy_ci95"]
        assert 0 <= lo <= rec["accuracy"] <= hi <= 1
    lo, hi = r["delta_accuracy_ci95"]
    assert lo <= r["accuracy"] - r["start_accuracy"] <= hi and 0 < r["mcnemar_p"] <= 1


def test_runtime_reports_each_backend_or_why_not(session_home, tmp_path):
    # An untrained ResNet-8 (7 convs, ResNet-18 has 20): what this checks is each back-end's report, torch.compile's
    # child process included, not the weights; a smaller graph compiles sooner.
    net = models.build("resnet8", 10, small_input=True)
    start = tmp_path / "resnet8.pt"
    export.save_bundle(export.make_bundle(net, arch="resnet8", num_classes=10, small_input=True, meta={}), start)
    r = run_here({**spec("unused", "runtime", {"compile_timeout_s": 240}, UNPAIRED),
                  "model": {"checkpoint": str(start)}}, session_home)
    rt = r["runtimes"]
    assert rt["eager_cpu"]["latency_ms"] > 0 and rt["onnxruntime_cpu"]["latency_ms"] > 0
    assert "latency_ms" in rt["compile_cpu"] or rt["compile_cpu"]["skipped"]
    for name, v in rt.items():
        assert ("latency_ms" in v) != bool(v.get("skipped")), name
    for name in ("onnxruntime_cpu", "compile_cpu"):   # timed interleaved with eager in one process
        if "latency_ms" in rt[name]:
            lo, hi = rt[name]["x_vs_eager_range"]
            assert 0 < lo <= rt[name]["x_vs_eager"] <= hi, name
    assert r["params"] == measure.count_params(net)  # weights unchanged


@pytest.mark.parametrize("method,params,field", [
    ("lowrank_svd", {"energy": 1.5}, "method.params.energy"),
    ("lowrank_svd", {"energy": 0.9, "rank_ratio": 0.5}, "method.params.rank_ratio"),
    ("distill", {"loss": "l2"}, "method.params.loss"),
    ("distill", {"student": "resnet999"}, "method.params.student"),
    ("factorize", {"mode": "diagonal"}, "method.params.mode"),
    ("quantize_int8", {"calibration_batches": 0}, "method.params.calibration_batches"),
    ("half", {"dtype": "float8"}, "method.params.dtype"),
    ("runtime", {"compile_timeout_s": 1}, "method.params.compile_timeout_s"),
    ("pipeline", {"steps": [{"name": "lowrank_svd", "params": {"energy": 2}}]}, "method.params.steps[0].params.energy"),
    ("pipeline", {"steps": [{"name": "quantize_int8"}, {"name": "lowrank_svd"}]}, "method.params.steps[0].name"),
])
def test_bad_params_are_rejected_naming_the_field(method, params, field):
    from engine.spec import SpecError
    from engine.validation import check_spec
    with pytest.raises(SpecError) as e:
        check_spec(spec("20260101-000000-abcdef", method, params))
    assert e.value.field == field, str(e.value)


def test_half_auto_is_float16_on_cuda_and_bfloat16_on_cpu_and_an_asked_type_is_kept():
    from engine.methods.quantize import half_dtype
    assert half_dtype("auto", torch.device("cuda"))[0] == "float16"
    name, why = half_dtype("auto", torch.device("cpu"))
    assert name == "bfloat16" and "float16 convolution" in why
    assert half_dtype("float16", torch.device("cpu")) == ("float16", "asked for")

