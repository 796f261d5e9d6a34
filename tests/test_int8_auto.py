"""INT8 that agrees with its FP32 model: ``format: auto`` keeps the fastest format meeting the agreement floor
(or says why none did), the calibration settings reach the scales, and cross-layer equalisation is an exact
rescaling of the FP32 model."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from engine import data as data_mod
from engine.methods import equalize, int8_auto, int8_formats, quantize
from engine.spec import DataSpec

from test_int8 import _ctx, _sensitive_model, _small_net


# -- the choice, on made-up agreements ------------------------------------------------------------------
def _predicting(fp32: torch.Tensor, agreement):
    """``predict`` for ``choose``/``keep_fp32``: ``agreement(raw, fmt)`` of the answers equal to ``fp32``'s."""
    def predict(raw, fmt):
        wrong = round(len(fp32) * (1 - agreement(raw, fmt)))
        return torch.cat([(fp32[:wrong] + 1) % 10, fp32[wrong:]])
    return predict


@pytest.mark.fast
def test_auto_keeps_the_fastest_format_meeting_the_floor_or_the_most_faithful_and_says_why():
    fp32 = torch.arange(500) % 10

    def predicting(agreements):   # format -> share of the 500 answers equal to fp32's
        return _predicting(fp32, lambda raw, fmt: agreements[fmt])
    made = []

    def make(fmt):
        made.append(fmt)
        return fmt.encode()
    c = int8_auto.choose(["fast", "middle", "slow"], make, fp32, predicting({"fast": 0.90, "middle": 0.99, "slow": 1.0}))
    assert (c.format, c.agreement, c.onnx_bytes, c.met) == ("middle", 0.99, b"middle", True) and made == ["fast", "middle"]
    assert "faster fast fell short (fast 90.0%)" in c.reason and [t["val_agreement"] for t in c.tried] == [0.90, 0.99]
    assert "99.0% (495 of 500; 95% lower bound 98.0%)" in c.reason

    c = int8_auto.choose(["fast", "middle", "slow"], make, fp32, predicting({"fast": 0.80, "middle": 0.95, "slow": 0.90}))
    assert c.format == "middle" and c.onnx_bytes == b"middle" and c.agreement == 0.95 and not c.met
    assert c.reason.startswith("middle: no format reached the 97% agreement floor") and "fast 80.0%" in c.reason


@pytest.mark.fast
def test_the_floor_is_judged_on_its_one_sided_95_percent_lower_bound():
    """The runtimes bench chose on 500 validation images: a share of 97.8 % there passed the bare floor and the
    model agreed on 95.5 % of the test images. Judged on the Wilson lower bound, it must agree on 492 of 500."""
    def wilson_low(k, n, z=1.6448536269514722):   # written out here, not read from engine.stats
        p = k / n
        return (p + z * z / (2 * n) - z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    for n in (150, 500, 1000, 5000):
        need = next(k for k in range(n + 1) if wilson_low(k, n) >= 0.97)
        assert int8_auto.judge(need, n)["met"] and not int8_auto.judge(need - 1, n)["met"]
        assert int8_auto.judge(need, n)["val_agreement_low"] == pytest.approx(wilson_low(need, n))
    assert (int8_auto.judge(492, 500)["met"], int8_auto.judge(491, 500)["met"]) == (True, False)
    j = int8_auto.judge(489, 500)                    # 97.8 %: the bare share passes, the bound (96.4 %) does not
    assert j["val_agreement"] >= int8_auto.AGREEMENT_FLOOR and not j["met"] and j["judged_on"] == "lower bound"
    assert j["val_agreement_low"] == pytest.approx(0.9644, abs=1e-4)
    # too few images for even full agreement to show 97 % at 95 %: the share itself is judged, and said so
    n = int8_auto.min_images()
    assert wilson_low(n, n) >= 0.97 > wilson_low(n - 1, n - 1)
    few = int8_auto.judge(n - 2, n - 1)
    assert few["judged_on"] == "share" and few["met"] == ((n - 2) / (n - 1) >= 0.97)
    assert "too few images to bound" in int8_auto.judged_text(few)
    with pytest.raises(ValueError, match="no validation images"):
        int8_auto.judge(0, 0)


@pytest.mark.fast
def test_a_share_that_passes_by_luck_sends_auto_to_keep_layers_fp32():
    """97.8 % of 500 with every layer INT8 is not shown to meet 97 %: ``keep_fp32`` runs (as static_int8 runs it
    where ``choose`` is not met) and keeps the fewest layers FP32 whose lower bound meets the floor."""
    fp32 = torch.arange(500) % 10
    predict = _predicting(fp32, lambda raw, fmt: {0: 0.978, 1: 0.982, 2: 0.99}[len(raw.decode().split(",")) - 1])

    def make(fmt, excluded):
        return ",".join([fmt, *excluded]).encode()
    first = int8_auto.choose(["qdq"], lambda f: make(f, []), fp32, predict)
    assert first.agreement == 0.978 and not first.met and "lower bound 96.4%" in first.reason
    c = int8_auto.keep_fp32(first, make, lambda fmt, raw: ["a", "b", "c"], fp32, predict, {"a": 1, "b": 1, "c": 2})
    # one layer FP32 (98.2 %, bound 96.9 %) is still short: two are kept (99.0 %, bound 97.7 %)
    assert (c.kept_fp32, c.agreement, c.met) == (["a", "b"], 0.99, True)
    search = c.searches[0]
    assert [t["fp32_layers"] for t in search["tried"]] == [0, 1, 2] and search["val_agreement_low"] >= 0.97
    assert "judged by the 95% lower bound of the agreement on 500 validation images" in c.reason
    auto = c.summary()
    assert (auto["val_images"], auto["val_agreeing"], auto["confidence"], auto["judged_on"]) == (
        500, 495, 0.95, "lower bound")


@pytest.mark.fast
def test_auto_tries_formats_fastest_first_for_the_cpu_and_the_calibration():
    vnni, avx2 = {"level": "amx"}, {"level": "avx2"}
    assert int8_auto.candidates("minmax", vnni, openvino=True)[0] == "qdq"
    assert int8_auto.candidates("minmax", avx2, openvino=True)[0] == "openvino"
    assert "openvino" not in int8_auto.candidates("entropy", avx2, openvino=True)   # entropy is ONNX Runtime's
    assert "qoperator" not in int8_auto.candidates("minmax", vnni, openvino=True)   # slower than FP32 where measured


# -- on real INT8 models -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return data_mod.load(DataSpec(name="digits", val_limit=150, test_limit=150, batch_size=64))


@pytest.fixture(scope="module")
def small_net(digits):
    return _small_net(digits)


def test_auto_picks_a_format_meeting_the_agreement_floor(tmp_path, monkeypatch, digits, small_net):
    monkeypatch.setattr(quantize, "bundle_bytes", lambda model, ctx: 1)
    net = small_net
    ctx = _ctx(tmp_path, digits)
    params = {"calibration_batches": 2, "calibration": "percentile", "per_channel": True, "max_drop_pt": None,
              "keep_first_last_fp32": True}
    model = quantize.static_int8(net, ctx, params, "auto")
    auto = ctx.extra["quantization"]["auto"]
    assert model.fmt == ctx.extra["quantization"]["format"] == auto["format"] == auto["tried"][-1]["format"]
    assert ctx.extra["int8_val_agreement"] >= int8_auto.AGREEMENT_FLOOR and "meets the 97% floor" in \
        ctx.extra["int8_format_reason"]
    assert auto["tried"][0]["format"] == int8_auto.candidates("percentile")[0]
    # the stem and the classifier stayed FP32: their weights are not dequantised INT8, the middle conv's is
    import onnx
    graph = onnx.load_from_string(model.onnx_bytes).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    weights = {n.name: n.input[1] for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}
    edges = ctx.extra["quantization"]["kept_fp32_edges"]
    assert edges == ["/0/Conv", "/6/Gemm"] and all(weights[e] not in dequantized for e in edges)
    assert weights["/2/Conv"] in dequantized
    # the agreement recorded is the shipped model's own
    assert ctx.extra["int8_val_agreement"] == pytest.approx(float(
        (int8_auto.top1(model, digits) == int8_auto.top1(net, digits)).float().mean()))


def test_auto_keeps_a_layer_fp32_where_every_format_passes_the_bare_floor_but_not_its_bound(
        tmp_path, monkeypatch, digits, small_net):
    """On a real tiny net: every all-INT8 model made to disagree with FP32 on 3 of the 144 validation images
    (97.9 %: the bare floor passes, the 95 % bound, 94.9 %, does not). static_int8 must go on to keep the middle
    conv FP32 (the only layer besides the first and last) and ship that model, saying what it was judged by."""
    import onnx
    monkeypatch.setattr(quantize, "bundle_bytes", lambda model, ctx: 1)
    real = int8_auto.runner_top1
    fp32_top1 = int8_auto.top1(small_net, digits)
    assert len(fp32_top1) == 144   # digits' 10 % validation split (under val_limit 150)

    def conv2_int8(raw: bytes) -> bool:
        graph = onnx.load_from_string(raw).graph
        dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        return next(n for n in graph.node if n.name == "/2/Conv").input[1] in dequantized

    def runner_top1(data):
        predict = real(data)

        def three_off(raw, fmt):
            top1 = predict(raw, fmt)
            if not conv2_int8(raw):
                return top1
            return torch.cat([(fp32_top1[:3] + 1) % 10, fp32_top1[3:]])
        return three_off
    monkeypatch.setattr(int8_auto, "runner_top1", runner_top1)
    ctx = _ctx(tmp_path, digits)
    params = {"calibration_batches": 2, "calibration": "percentile", "per_channel": True, "max_drop_pt": None,
              "keep_first_last_fp32": True}
    model = quantize.static_int8(small_net, ctx, params, "auto")
    auto = ctx.extra["quantization"]["auto"]
    assert all(t["val_agreeing"] == 141 and t["val_agreement"] >= int8_auto.AGREEMENT_FLOOR and not t["met"]
               for t in auto["tried"])
    assert [t["format"] for t in auto["tried"]] == int8_auto.candidates("percentile")
    assert ctx.extra["int8_fp32_layers"] == auto["kept_fp32"] == ["/2/Conv"] and not conv2_int8(model.onnx_bytes)
    assert auto["met"] and auto["val_images"] == 144 and auto["val_agreement_low"] >= int8_auto.AGREEMENT_FLOOR
    assert "judged by the 95% lower bound of the agreement on 144 validation images" in ctx.extra["int8_format_reason"]


def test_auto_keeps_the_sensitive_layer_fp32_when_no_format_meets_the_floor(tmp_path, monkeypatch, digits):
    monkeypatch.setattr(quantize, "bundle_bytes", lambda model, ctx: 1)
    net = _sensitive_model(digits)   # one outlier weight: per-tensor INT8 wipes out conv2 in every format
    warnings = []
    ctx = _ctx(tmp_path, digits)
    ctx.log = type("Log", (), {"warning": staticmethod(lambda msg, *a: warnings.append(msg % a))})
    params = {"calibration_batches": 2, "calibration": "minmax", "per_channel": False, "max_drop_pt": None}
    model = quantize.static_int8(net, ctx, params, "auto")
    auto = ctx.extra["quantization"]["auto"]
    tried = auto["tried"]
    assert [t["format"] for t in tried] == int8_auto.candidates("minmax")                   # every one tried
    assert max(t["val_agreement"] for t in tried) < int8_auto.AGREEMENT_FLOOR                # none met it all-INT8
    # each format searched; the kept model meets the floor on val with the outlier layer FP32, and says so
    assert [s["format"] for s in auto["keep_fp32"]] == [t["format"] for t in tried]
    # The outlier layer goes FP32 first (lowest SQNR). Whether a second must follow turns on one of the 144
    # validation answers (1 layer: lower bound 0.9695 with ONNX Runtime 1.32, just under the 0.97 floor), so
    # the test asks for the order and for the fewest layers the floor allowed, not for an exact count.
    kept = auto["kept_fp32"]
    assert ctx.extra["int8_fp32_layers"] == kept and kept[0] == "/2/Conv"
    chosen = next(s for s in auto["keep_fp32"] if s["format"] == auto["format"])
    assert chosen["tried"][-1]["fp32_layers"] == len(kept) and chosen["tried"][-1]["val_agreement_low"] >= \
        int8_auto.AGREEMENT_FLOOR > max(t["val_agreement_low"] for t in chosen["tried"][:-1])
    assert ctx.extra["int8_val_agreement"] >= int8_auto.AGREEMENT_FLOOR and model.fmt == auto["format"]
    assert 0 < auto["fp32_mac_share"] < 1
    assert ctx.extra["int8_format_reason"].startswith(f"{model.fmt} with {len(kept)} layer(s) kept FP32")
    assert warnings and "kept FP32" in warnings[0]
    # the shipped model is that one: conv2 computes in FP32 (its weight is not dequantised INT8) and agrees
    import onnx
    graph = onnx.load_from_string(model.onnx_bytes).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert next(n for n in graph.node if n.name == "/2/Conv").input[1] not in dequantized
    assert float((int8_auto.top1(model, digits) == int8_auto.top1(net, digits)).double().mean()) == \
        ctx.extra["int8_val_agreement"]


@pytest.mark.fast
def test_keep_fp32_keeps_the_fewest_fp32_macs_or_says_the_floor_is_unreachable():
    fp32 = torch.arange(500) % 10
    layers = ["a", "b", "c"]
    macs = {"a": 10, "b": 80, "c": 10, "add": 0}

    def predicting(agreement):   # (format, layers kept FP32) -> share of the answers equal to fp32's
        def predict(raw, fmt):
            wrong = round(500 * (1 - agreement(fmt, raw.decode().split(",")[1:])))
            return torch.cat([(fp32[:wrong] + 1) % 10, fp32[wrong:]])
        return predict

    def make(fmt, excluded):
        return ",".join([fmt, *excluded]).encode()

    def run(agreement):
        predict = predicting(agreement)
        first = int8_auto.choose(["fast", "slow"], lambda f: make(f, []), fp32, predict)
        return int8_auto.keep_fp32(first, make, lambda fmt, raw: list(layers), fp32, predict, macs)
    # fast needs a and b FP32 (90 % of the MACs), slow only a (10 %): slow is kept
    c = run(lambda fmt, kept: 0.99 if (kept[:2] == ["a", "b"] or (fmt == "slow" and kept)) else 0.90)
    assert (c.format, c.kept_fp32, c.fp32_mac_share, c.onnx_bytes) == ("slow", ["a"], 0.1, b"slow,a")
    assert [s["kept_fp32"] for s in c.searches] == [["a", "b"], ["a"]] and c.agreement == 0.99
    assert c.reason.startswith("slow with 1 layer(s) kept FP32 (10.0% of the MACs)")
    # both need the same FP32 layers: the faster format is kept
    assert run(lambda fmt, kept: 0.99 if kept else 0.90).format == "fast"
    # no count of FP32 layers reaches the floor: the most faithful found is kept, and the reason says so
    c = run(lambda fmt, kept: 0.90 + 0.01 * len(kept) + (0.02 if fmt == "slow" else 0))
    assert (c.format, c.kept_fp32, c.agreement) == ("slow", layers, 0.95)
    assert "the 97% agreement floor was not reached" in c.reason and "kept the most faithful, 95.0%" in c.reason


def _activation_scales(path) -> dict[str, float]:
    """QuantizeLinear scales of the activations (not the weights) of a QDQ model."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load(str(path))
    consts = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    return {n.input[0]: float(consts[n.input[1]]) for n in m.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in consts}


@pytest.mark.parametrize("change", [{"calibration": "percentile"}, {"batches": 1}])
def test_the_calibration_settings_set_the_activation_scales(tmp_path, digits, small_net, change):
    net = small_net
    fp32 = tmp_path / "fp32.onnx"
    from engine import export
    export.export_onnx(net, digits.input_shape, fp32)
    scales = []
    for i, kw in enumerate(({"calibration": "minmax", "batches": 3}, {"calibration": "minmax", "batches": 3, **change})):
        out = tmp_path / f"{i}.onnx"
        int8_formats.quantize(fp32, out, "qdq", digits, kw["batches"], kw["calibration"])
        scales.append(_activation_scales(out))
    assert scales[0].keys() == scales[1].keys() and len(scales[0]) >= 3
    assert scales[0] != scales[1]
    if "calibration" in change:   # percentile clips the outliers minmax keeps: no scale grows
        assert all(scales[1][k] <= scales[0][k] + 1e-9 for k in scales[0])


# -- cross-layer equalisation ----------------------------------------------------------------------------
@pytest.mark.fast
def test_cross_layer_equalisation_is_an_exact_rescaling_that_evens_the_ranges():
    from engine.cifar_nets import mobilenet_v2_cifar
    torch.manual_seed(0)
    net = mobilenet_v2_cifar(10, 0.25)
    for m in net.modules():   # batch-norms as a trained net has them, so folding them matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.3, 3)
            m.weight.data.uniform_(0.1, 4)
    net.eval()
    relu = copy.deepcopy(net)
    equalize._fold_and_swap(relu)       # what CLE starts from: BN folded, ReLU6 -> ReLU
    done = equalize.equalize(net)
    assert done.pairs >= 10 and done.folded_bn >= 20 and done.relu6_swapped >= 10 and done.iterations >= 1
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref, got = relu(x), done.model(x)
    assert torch.allclose(ref, got, atol=1e-5 * float(ref.abs().max()))
    assert net.features[1].conv[0][2].__class__ is nn.ReLU6   # the model given is left as it was
    # every equalised pair now has matching channel ranges
    for a, b in equalize._pairs(done.model):
        r1 = a.weight.abs().amax(dim=(1, 2, 3))
        r2 = b.weight.abs().amax(dim=(1, 2, 3)) if b.groups > 1 else b.weight.abs().amax(dim=(0, 2, 3))
        assert torch.allclose(r1, r2, rtol=0.05)
    # before CLE they did not
    a, b = equalize._pairs(relu)[0]
    assert not torch.allclose(a.weight.abs().amax(dim=(1, 2, 3)), b.weight.abs().amax(dim=(1, 2, 3)), rtol=0.05)


@pytest.mark.fast
def test_calibration_drops_a_short_last_batch_which_histogram_calibrators_cannot_stack():
    """200 images at batch 32 end in a batch of 8: percentile/entropy calibration failed on it."""
    import torch
    from engine.methods.int8_formats import Calibration

    class Data:
        def loader(self, split, device, train):
            return [(torch.zeros(n, 3, 8, 8), torch.zeros(n)) for n in (32, 32, 8)]
    sizes = [b.shape[0] for b in Calibration(Data(), "x", batches=8).arrays()]
    assert sizes == [32, 32]
    assert [b.shape[0] for b in Calibration(Data(), "x", batches=1).arrays()] == [32]
