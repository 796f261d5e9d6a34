"""INT8 that keeps accuracy: the CPU's INT8 level and the format it picks, the accuracy-limited search (on a
model made sensitive: one layer with a huge outlier weight), QAT to a real INT8 model, pruned -> INT8 keeping
its channels, and data limits that bound every split."""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from engine import data as data_mod
from engine import int8_cpu
from engine.errors import SpecError
from engine.methods import int8_accuracy, quantize
from engine.spec import DataSpec
from engine.validation import check_spec

from conftest import run_here

MEASURE = {"onnx": False, "latency_runs": 2, "warmup_runs": 1, "paired_rounds": 1, "batch_size": 4}


# -- the CPU's INT8 level ------------------------------------------------------------------------
@pytest.mark.fast
@pytest.mark.parametrize("flags, level, auto, auto_without_openvino", [
    ("fpu sse2 avx avx2 fma", "avx2", "openvino", "qdq_reduce_range"),
    ("avx2 avx512f avx512bw", "avx512", "openvino", "qdq_reduce_range"),
    ("avx2 avx512bw avx512_vnni", "vnni", "qdq", "qdq"),
    ("avx2 avx_vnni", "vnni", "qdq", "qdq"),
    ("avx2 avx512_vnni amx_tile amx_int8", "amx", "qdq", "qdq"),
])
def test_cpu_int8_level_and_the_format_it_favours(tmp_path, flags, level, auto, auto_without_openvino):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    cap = int8_cpu.capability(int8_cpu.flags(info))
    assert cap["level"] == level and cap["note"]
    assert int8_cpu.default_format(level, openvino=True) == auto
    assert int8_cpu.default_format(level, openvino=False) == auto_without_openvino
    if level in ("avx2", "avx512"):
        assert "saturate" in cap["note"]
    assert int8_cpu.flags(tmp_path / "missing") == set()


@pytest.mark.fast
def test_bad_int8_params_are_refused_before_anything_runs(monkeypatch, tiny_spec_from):
    with pytest.raises(SpecError, match="method.params.format"):
        check_spec(tiny_spec_from("quantize_int8", {"format": "fp4"}))
    with pytest.raises(SpecError, match="method.params.calibration"):
        check_spec(tiny_spec_from("quantize_int8", {"format": "openvino", "calibration": "entropy"}))
    with pytest.raises(SpecError, match="method.params.max_drop_pt"):
        check_spec(tiny_spec_from("quantize_int8", {"max_drop_pt": -1}))
    with pytest.raises(SpecError, match="method.params.epochs"):
        check_spec(tiny_spec_from("qat", {"epochs": 0}))
    monkeypatch.setattr(int8_cpu, "openvino_available", lambda: False)
    with pytest.raises(SpecError, match=r"method.params.format.*not installed on this machine"):
        check_spec(tiny_spec_from("qat", {"format": "openvino"}))


@pytest.fixture()
def tiny_spec_from():
    def make(method: str, params: dict) -> dict:
        return {"data": {"name": "digits"}, "model": {"arch": "resnet18"},
                "method": {"name": method, "params": params}}
    return make


# -- the search for the fewest FP32 layers ---------------------------------------------------------
@pytest.mark.fast
def test_search_keeps_the_fewest_sensitive_layers_that_fit_and_says_when_none_does():
    order = [f"l{i}" for i in range(10)]

    def make(excluded):
        return ",".join(excluded).encode()

    def score_needing(k):   # accuracy recovers once the k most sensitive layers are FP32
        return lambda b: 0.90 if len([x for x in b.decode().split(",") if x]) >= k else 0.50
    s = int8_accuracy.search(make, score_needing(3), order, 0.90, 1.0)
    assert s.met and s.best["kept_fp32"] == ["l0", "l1", "l2"] and s.best["drop_pt"] == 0
    assert [t["fp32_layers"] for t in s.tried] == [0, 1, 2, 4, 3]          # doubling, then bisection
    assert int8_accuracy.search(make, score_needing(0), order, 0.90, 1.0).best["kept_fp32"] == []

    def never(b):   # 40 points lost with nothing FP32, fewer with more; never within 1 point
        return 0.5 + 0.03 * len([x for x in b.decode().split(",") if x])
    s = int8_accuracy.search(make, never, order, 0.90, 1.0)
    summary = s.summary()
    assert not s.met and not summary["met"] and summary["kept_fp32"] == order       # the smallest drop found
    assert summary["val_drop_pt"] == pytest.approx(10.0) and [t["fp32_layers"] for t in summary["tried"]] == [0, 1, 2, 4, 8, 10]


@pytest.mark.fast
def test_layers_rank_by_their_lowest_sqnr():
    assert int8_accuracy.ranked({"a": 30.0, "b": 5.0, "c": float("inf"), "d": 5.0}) == ["b", "d", "a", "c"]


# -- accuracy-limited PTQ on a model made sensitive -------------------------------------------------
def _fit(net: nn.Module, data, epochs: int) -> nn.Module:
    """Adam on the training split (no augmentation) for a few seconds; returns ``net`` in eval mode."""
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(epochs):
        for x, y in data.loader("train", "cpu", train=False):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    return net.eval()


def _small_net(data) -> nn.Module:
    """A small conv net trained on digits for a few seconds."""
    torch.manual_seed(0)
    c = data.input_shape[0]
    net = nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, data.num_classes))
    return _fit(net, data, epochs=6)


def _sensitive_model(data) -> nn.Module:
    """The small net given one huge weight in conv2 from an input channel that is always zero: the FP32
    answers do not change, but a per-tensor INT8 scale for conv2 rounds every other conv2 weight to zero."""
    net = _small_net(data)
    with torch.no_grad():
        net[0].weight[7].zero_()
        net[0].bias[7] = -1.0                    # channel 7 is ReLU(-1) = 0 everywhere
        net[2].weight[0, 7, 1, 1] = 1e4 * net[2].weight.abs().max()
    return net.eval()


def _ctx(tmp_path: Path, data) -> types.SimpleNamespace:
    return types.SimpleNamespace(run_dir=tmp_path, input_shape=data.input_shape, data=data, extra={},
                                 progress=lambda **kw: None, cancelled=lambda: False, log=types.SimpleNamespace(
                                     warning=lambda *a: None), spec=types.SimpleNamespace(
                                     measure=types.SimpleNamespace(threads=1)))


def test_accuracy_limit_keeps_the_outlier_layer_fp32(tmp_path, monkeypatch):
    monkeypatch.setattr(quantize, "bundle_bytes", lambda model, ctx: 1)   # no Slimbench arch to bundle
    data = data_mod.load(DataSpec(name="digits", val_limit=150, test_limit=200, batch_size=64))
    net = _sensitive_model(data)
    fp32_val = int8_accuracy.accuracy(net, data, "val")
    assert fp32_val > 0.8
    params = {"calibration_batches": 4, "calibration": "minmax", "per_channel": False, "format": "qdq_s8s8"}

    plain_ctx = _ctx(tmp_path, data)
    plain = quantize.static_int8(net, plain_ctx, {**params, "max_drop_pt": None}, "qdq_s8s8")
    assert int8_accuracy.accuracy(plain, data, "val") < fp32_val - 0.3      # conv2 is wiped out

    ctx = _ctx(tmp_path, data)
    limited = quantize.static_int8(net, ctx, {**params, "max_drop_pt": 2.0}, "qdq_s8s8")
    assert ctx.extra["int8_limit_met"] is True
    kept = ctx.extra["int8_fp32_layers"]
    assert kept[0] == "/2/Conv" and len(kept) <= 2                          # the outlier layer, ranked first
    assert int8_accuracy.accuracy(limited, data, "val") >= fp32_val - 0.02
    assert ctx.extra["quantization"]["accuracy_limit"]["tried"][0]["drop_pt"] > 30
    # the rest is still INT8: the kept layer's weights are float, the others' int8
    import onnx
    inits = {i.name: i.data_type for i in onnx.load_from_string(limited.onnx_bytes).graph.initializer}
    assert onnx.TensorProto.INT8 in inits.values()
    # agreement with its own FP32 model, over the test split
    limited.predict(data, lambda: False)
    assert limited.agreement >= 0.95


def test_an_accuracy_limit_that_cannot_be_met_says_so_and_keeps_the_best_found(tmp_path, monkeypatch):
    monkeypatch.setattr(quantize, "bundle_bytes", lambda model, ctx: 1)
    data = data_mod.load(DataSpec(name="digits", val_limit=150, test_limit=200, batch_size=64))
    net = _sensitive_model(data)
    real = int8_accuracy.accuracy

    def five_points_short(fn, data, split="val"):   # every INT8 model scores 5 pt below what it does
        return real(fn, data, split) - (0.05 if not isinstance(fn, nn.Module) else 0.0)
    monkeypatch.setattr(int8_accuracy, "accuracy", five_points_short)
    warnings = []
    ctx = _ctx(tmp_path, data)
    ctx.log = types.SimpleNamespace(warning=lambda msg, *a: warnings.append(msg % a))
    params = {"calibration_batches": 4, "calibration": "minmax", "per_channel": False, "format": "qdq_s8s8",
              "max_drop_pt": 1.0}
    model = quantize.static_int8(net, ctx, params, "qdq_s8s8")
    limit = ctx.extra["quantization"]["accuracy_limit"]
    assert ctx.extra["int8_limit_met"] is False and limit["met"] is False
    assert warnings and warnings[0].startswith("INT8 accuracy limit of 1.00 pt not met: the best found drops")
    # the best it found: the smallest drop tried, with the outlier layer kept FP32 (all-INT8 lost > 30 pt)
    assert limit["val_drop_pt"] == min(t["drop_pt"] for t in limit["tried"]) < 10
    assert limit["tried"][0]["drop_pt"] > 30 and "/2/Conv" in ctx.extra["int8_fp32_layers"]
    monkeypatch.setattr(int8_accuracy, "accuracy", real)
    assert real(model, data, "val") >= real(net, data, "val") - 0.05   # the model returned is that best one


@pytest.mark.skipif(not int8_cpu.openvino_available(), reason="OpenVINO + NNCF not installed")
def test_an_openvino_int8_artefact_loads_in_openvino_and_agrees_with_pytorch(tmp_path, monkeypatch):
    from engine.methods import int8_formats
    monkeypatch.setattr(quantize, "bundle_bytes", lambda model, ctx: 1)
    data = data_mod.load(DataSpec(name="digits", val_limit=100, test_limit=200, batch_size=64))
    net = _small_net(data)
    params = {"calibration_batches": 4, "calibration": "minmax", "per_channel": True, "format": "openvino",
              "max_drop_pt": None}
    model = quantize.static_int8(net, _ctx(tmp_path, data), params, "openvino")
    shipped = tmp_path / "model.onnx"
    shipped.write_bytes(model.onnx_bytes)
    runner = int8_formats.runner(shipped.read_bytes(), "openvino", 1)
    assert isinstance(runner, int8_formats.OpenVinoRunner)
    same = total = 0
    with torch.no_grad():
        for x, _ in data.loader("test", "cpu", train=False):
            same += int((runner(x).argmax(1) == net(x).argmax(1)).sum())
            total += len(x)
    assert total == 200 and same / total >= 0.95


class _SqueezeExcite(nn.Module):
    """MobileNetV3's squeeze-and-excitation: channel weights from the pooled features, Hardsigmoid-gated."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, channels // 2, 1), nn.Conv2d(channels // 2, channels, 1)

    def forward(self, x):
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * nn.functional.hardsigmoid(self.fc2(nn.functional.relu(self.fc1(s))))


@pytest.mark.skipif(not int8_cpu.openvino_available(), reason="OpenVINO + NNCF not installed")
def test_openvino_stores_the_se_layers_nncf_skips_in_int8_and_says_what_stays_fp32(tmp_path, monkeypatch):
    """NNCF leaves squeeze-and-excitation blocks FP32 (its SE_BLOCK pattern): their weights are stored INT8
    and dequantised to an FP32 computation, and the record names what the file holds."""
    import onnx

    from engine.methods import int8_formats
    monkeypatch.setattr(quantize, "bundle_bytes", lambda model, ctx: 1)
    data = data_mod.load(DataSpec(name="digits", val_limit=100, test_limit=200, batch_size=64))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(data.input_shape[0], 32, 3, padding=1), nn.ReLU(), _SqueezeExcite(32),
                        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), _SqueezeExcite(64),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, data.num_classes))
    _fit(net, data, epochs=4)
    params = {"calibration_batches": 4, "calibration": "minmax", "per_channel": True, "format": "openvino",
              "max_drop_pt": None, "keep_first_last_fp32": True}
    ctx = _ctx(tmp_path, data)
    model = quantize.static_int8(net, ctx, params, "openvino")
    storage = ctx.extra["quantization"]["weight_storage"]
    se = [f"/{i}/fc{j}/Conv" for i in (2, 5) for j in (1, 2)]
    assert sorted(storage["int8_weight_only"]) == se                     # NNCF skipped them: INT8 storage only
    assert storage["fp32"] == ctx.extra["quantization"]["kept_fp32_edges"] == ["/0/Conv", "/8/Gemm"]
    graph = onnx.load_from_string(model.onnx_bytes).graph
    fp32_bytes = sum(4 * int(np.prod(t.dims)) for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT
                     and t.name.endswith("weight"))
    assert storage["fp32_bytes"] == fp32_bytes > 0
    assert ctx.extra["int8_fp32_weight_share"] == pytest.approx(fp32_bytes / len(model.onnx_bytes))
    # the SE layers' weights the file holds are int8, and the model still answers as PyTorch does in OpenVINO
    int8 = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
    convs = {n.name: n for n in graph.node}
    producers = {o: n for n in graph.node for o in n.output}
    assert all(producers[convs[name].input[1]].input[0] in int8 for name in se)
    run = int8_formats.runner(model.onnx_bytes, "openvino", 1)
    same = total = 0
    with torch.no_grad():
        for x, _ in data.loader("test", "cpu", train=False):
            same += int((run(x).argmax(1) == net(x).argmax(1)).sum())
            total += len(x)
    assert total == 200 and same / total >= 0.95


# -- QAT on a pruned model, end to end: a real INT8 model that keeps the channel savings ------------------
QAT_DATA = {"name": "digits", "limit": 300, "val_limit": 100, "test_limit": 150}


@pytest.fixture(scope="module")
def pruned_then_qat(tiny_base, session_home):
    data = QAT_DATA

    def job(start, method, params):
        return run_here({"data": data, "model": {"from_run": start}, "method": {"name": method, "params": params},
                         "train": {"epochs": 1}, "measure": MEASURE}, session_home)
    pruned = job(tiny_base["run_id"], "prune_structured", {"ratio": 0.5, "finetune_epochs": 0})
    return pruned, job(pruned["run_id"], "qat", {"epochs": 1, "format": "qdq", "calibration_batches": 2})


def test_qat_produces_a_real_int8_model(pruned_then_qat):
    import onnx
    import onnxruntime as ort
    pruned, r = pruned_then_qat
    assert r["precision"] == "int8" and r["int8_format"] == "qdq" and r["method"] == "qat"
    assert any(h["phase"] == "qat" for h in r["history"]) and r["qat"]["batch_norms_folded"] > 10
    m = onnx.load(r["onnx"])
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in m.graph.node}
    int8_weights = [i for i in m.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8_weights) >= 15                             # every conv's weights stored as int8
    assert r["onnx_bytes"] < 0.4 * r["fp32_onnx_bytes"]
    sess = ort.InferenceSession(r["onnx"], providers=["CPUExecutionProvider"])
    assert sess.run(None, {sess.get_inputs()[0].name: np.zeros((2, 3, 8, 8), np.float32)})[0].shape == (2, 10)
    assert 0.9 <= r["int8_agreement"] <= 1.0 and r["int8_speedup"] > 0
    # the shipped file, loaded again from disk in its format's runtime, gives the answers the run scored (its
    # FP32 twin, fine-tuned with fake quantisation, is not shipped: int8_agreement above is measured against it)
    from engine.methods import int8_formats
    shipped = int8_formats.runner(Path(r["onnx"]).read_bytes(), r["int8_format"], 1)
    import dataclasses
    meta = torch.load(r["checkpoint"], weights_only=True)["meta"]   # normalised as the model was trained
    data = dataclasses.replace(data_mod.load(DataSpec(**QAT_DATA)), mean=meta["mean"], std=meta["std"])
    right = total = 0
    for x, y in data.loader("test", "cpu", train=False):
        right += int((shipped(x).argmax(1) == y).sum())
        total += len(x)
    assert total == 150 and right / total == pytest.approx(r["accuracy"], abs=0.01)
    assert r["val_images"] == 100 and r["test_images"] == 150   # the limits bound every split
    assert set(r["phase_seconds"]) == {"data", "train", "method", "evaluate", "export", "measure"}
    assert r["phase_seconds"]["train"] > 0 and all(v >= 0 for v in r["phase_seconds"].values())
    assert sum(r["phase_seconds"].values()) <= r["finished"] - r["started"] + 0.5


def test_pruned_then_int8_keeps_the_channel_savings(pruned_then_qat, tiny_base):
    import onnx
    from engine import export
    pruned, r = pruned_then_qat
    pruned_model, _ = export.load_model(pruned["checkpoint"])
    base_model, _ = export.load_model(tiny_base["checkpoint"])

    def conv_shapes(model):
        return sorted(tuple(m.weight.shape[:2]) for m in model.modules() if isinstance(m, nn.Conv2d))
    convs = [i for i in onnx.load(r["onnx"]).graph.initializer if len(i.dims) == 4
             and i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.FLOAT)]
    shapes = sorted(tuple(i.dims[:2]) for i in convs)
    int8 = [i for i in convs if i.data_type == onnx.TensorProto.INT8]
    assert shapes == conv_shapes(pruned_model)                         # the INT8 model's convs are the pruned ones
    assert len(int8) >= len(convs) - 1                                  # all INT8 but the stem (keep_first_last_fp32)
    assert sum(a * b for a, b in shapes) < 0.5 * sum(a * b for a, b in conv_shapes(base_model))
    assert r["macs"] == pruned["macs"] < 0.5 * tiny_base["macs"]


# -- data limits ---------------------------------------------------------------------------------
@pytest.mark.fast
def test_val_and_test_limits_bound_their_splits():
    full = data_mod.load(DataSpec(name="digits"))
    d = data_mod.load(DataSpec(name="digits", limit=200, val_limit=30, test_limit=40))
    assert (len(d.train), len(d.val), len(d.test)) == (200, 30, 40) and len(full.val) > 30
    none_held = data_mod.load(DataSpec(name="digits", val_fraction=0.0, val_limit=25))
    assert len(none_held.val) == 25
    with pytest.raises(SpecError, match="data.val_limit"):
        check_spec({"data": {"name": "digits", "val_limit": 0}, "model": {"arch": "resnet18"}})


@pytest.mark.fast
def test_phase_summary_says_where_the_time_went():
    from engine import results
    text = results.phase_summary({"data": 1.0, "train": 6.0, "method": 0.0, "evaluate": 3.0})
    assert text.startswith("Where the time went: training 6.0 s (60 %) · test set 3.0 s (30 %)")


# -- the bench's INT8 formats table, on tiny settings ---------------------------------------------------
def test_bench_int8_table_compares_every_format_with_both_quantisers_defaults():
    from bench import int8_formats as bench_int8
    data = data_mod.load(DataSpec(name="digits", val_limit=50, test_limit=120, batch_size=32))
    res = bench_int8.run(_small_net(data), data, batches=2, rounds=2, runs=4, log=lambda m: None)
    rows = {r["name"].split(" (auto")[0]: r for r in res["rows"]}
    expected = {"FP32 (ONNX Runtime)", "ONNX Runtime quantize_static defaults",
                *[f"ours: {f}" for f in ("qdq", "qdq_reduce_range", "qdq_s8s8", "qoperator")]}
    if int8_cpu.openvino_available():
        expected |= {"FP32 (OpenVINO)", "ours: openvino", "OpenVINO + NNCF defaults"}
    assert set(rows) == expected
    assert sum("(auto tries first)" in r["name"] for r in res["rows"]) == 1
    for name, r in rows.items():
        assert r["images"] == 120 and 0 <= r["agreement"] <= 1 and r["latency_ms"] > 0
        assert ("speedup" in r) == (not name.startswith("FP32"))
    assert rows["FP32 (ONNX Runtime)"]["agreement"] > 0.98          # ONNX Runtime FP32 is the same model
    assert rows["ours: qdq_s8s8"]["agreement"] > 0.9
    text = bench_int8.section(res, "tiny digits net")
    assert text.startswith("### INT8 formats (tiny digits net)") and text.count("\n| ") == len(rows) + 1
    assert ("met" in text or "missed by" in text) and f"tries **{res['cpu']['auto_format']}, " in text
