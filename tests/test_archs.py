"""The literature's architectures: their size against the published figures, the small-input stems,
what each method refuses on them before training, and baseline -> prune_structured -> quantize_int8 ->
bundle and ONNX round trip on each."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import export, measure, models
from engine.spec import SpecError

from conftest import run_here

NEW_ARCHS = ["resnet20", "resnet32", "resnet56", "resnet110", "vgg16_bn_cifar", "mobilenet_v2_cifar",
             "googlenet", "inception_v3"]

# (arch, input size, classes, published params, published MACs or None, source). MACs count conv and
# linear multiply-accumulates, as engine.measure does and as the sources do ("MAdds", "FLOPs" of conv/FC).
PUBLISHED = [
    # chenyaofo/pytorch-cifar-models README, CIFAR-10 model zoo (#Params 0.27 M, #MAdds 40.81 M); He et al.
    # 2016, Table 6: 0.27 M.
    ("resnet20", 32, 10, 0.27e6, 40.81e6, "chenyaofo/pytorch-cifar-models README; He et al. 2016"),
    # chenyaofo: 0.47 M / 69.12 M. He et al.'s 0.46 M is option A (zero-padding shortcuts); option B's two
    # 1x1 shortcut convs + BN add 2,944 parameters (466,906 vs 463,962), which rounds to 0.47.
    ("resnet32", 32, 10, 0.47e6, 69.12e6, "chenyaofo/pytorch-cifar-models README"),
    # chenyaofo: 0.86 M / 125.75 M; osmr/imgclsmob pytorch/README.md (CIFAR-10, option B): 855,770 params.
    ("resnet56", 32, 10, 855_770, 125.75e6, "osmr/imgclsmob pytorch/README.md; chenyaofo README"),
    # He et al. 2016 round it to 1.7 M; osmr/imgclsmob pytorch/README.md gives the exact 1,730,714
    # (its MAC column counts BN and activations too, so it is not compared).
    ("resnet110", 32, 10, 1_730_714, None, "osmr/imgclsmob pytorch/README.md; He et al. 2016 (1.7 M)"),
    # lmbxmu/HRankPlus README, CIFAR-10 baseline row "VGG-16-BN 14.98M 313.73M" (HRank's own README gives
    # only its pruned models, as shares of these).
    ("vgg16_bn_cifar", 32, 10, 14.98e6, 313.73e6, "lmbxmu/HRankPlus README (HRank's VGG-16-BN)"),
    # chenyaofo: mobilenetv2_x1_0 2.24 M / 87.98 M.
    ("mobilenet_v2_cifar", 32, 10, 2.24e6, 87.98e6, "chenyaofo/pytorch-cifar-models README"),
    # torchvision GoogLeNet_Weights.IMAGENET1K_V1 meta: num_params 6,624,904, "GFLOPS" 1.50 (MACs).
    ("googlenet", 224, 1000, 6_624_904, 1.498e9, "torchvision weight metadata"),
]


@pytest.mark.fast
@pytest.mark.parametrize("arch,size,classes,params,macs,source", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_params_and_macs_match_the_published_figures(arch, size, classes, params, macs, source):
    m = models.build(arch, classes, small_input=size <= models.SMALL_INPUT_MAX)
    assert measure.count_params(m) == pytest.approx(params, rel=0.01), source
    if macs is not None:
        assert measure.count_macs(m, (3, size, size))["macs"] == pytest.approx(macs, rel=0.01), source


@pytest.fixture(scope="module")
def built():
    """googlenet and inception_v3 with and without their small-input stems, built once (seconds each)."""
    return {(a, small): models.build(a, 10, small_input=small)
            for a in ("googlenet", "inception_v3") for small in (True, False)}


@pytest.mark.fast
def test_inception_v3_matches_torchvision_with_the_auxiliary_head_it_leaves_off():
    from torchvision.models import Inception_V3_Weights
    from torchvision.models.inception import InceptionAux
    # torchvision's Inception_V3_Weights.IMAGENET1K_V1: num_params 27,161,264 (its AuxLogits head
    # included), "GFLOPS" 5.71 (MACs) at 299x299; the installed metadata says the same.
    meta = Inception_V3_Weights.IMAGENET1K_V1.meta
    assert (meta["num_params"], meta["_ops"]) == (27_161_264, pytest.approx(5.713, abs=1e-3))
    m = models.build("inception_v3", 1000)
    aux = measure.count_params(InceptionAux(768, 1000))
    assert measure.count_params(m) + aux == pytest.approx(27_161_264, rel=0.01)
    assert measure.count_macs(m, (3, 299, 299))["macs"] == pytest.approx(5.71e9, rel=0.01)


@pytest.mark.fast
def test_googlenet_and_inception_build_without_auxiliary_heads_or_input_transform(built):
    for arch in ("googlenet", "inception_v3"):
        m = built[arch, True]
        with torch.no_grad():
            out = m.train()(torch.randn(2, 3, 32, 32))  # training mode: aux heads would make this a tuple
        m.eval()
        assert isinstance(out, torch.Tensor) and out.shape == (2, 10)
        assert not m.transform_input and not m.aux_logits


@pytest.mark.fast
def test_inception_without_its_stem_is_refused_at_small_sizes_naming_the_size_it_needs(built):
    m = built["inception_v3", False]
    for size in (32, 74):
        with pytest.raises(SpecError) as e:
            models.check_input_fits(m, "inception_v3", (3, size, size), "model.arch")
        assert e.value.field == "model.arch" and "at least 75x75" in str(e.value)
    models.check_input_fits(m, "inception_v3", (3, 75, 75), "model.arch")  # torchvision's documented min_size


@pytest.mark.fast
def test_small_input_stems_keep_googlenet_and_inception_usable_at_32px(built):
    g, i = built["googlenet", True], built["inception_v3", True]
    feats = {}

    def side(name):
        def hook(_m, x, _y):
            feats[name] = x[0].shape[-1]
        return hook
    g.avgpool.register_forward_hook(side("googlenet"))
    i.avgpool.register_forward_hook(side("inception_v3"))
    with torch.no_grad():
        g.eval()(torch.zeros(1, 3, 32, 32))
        i.eval()(torch.zeros(1, 3, 32, 32))
    # a map left before the pooling: 8x downsampling for GoogLeNet (as the CIFAR ResNets), 16x for Inception
    assert feats == {"googlenet": 4, "inception_v3": 2}
    with pytest.raises(SpecError, match="at least 21x21"):
        models.check_input_fits(i, "inception_v3", (3, 16, 16), "model.arch")


# -- each new arch end to end -------------------------------------------------------------------
DATA = {"name": "digits", "limit": 32, "test_limit": 16, "batch_size": 16}
# Each arch at the smallest image it takes (Inception-v3's small stem needs 21x21, see above): the assertions
# are about structure (cut widths, ONNX equality, INT8 size), not accuracy, and compute falls with the pixels.
# No deployment runtimes (test_deploy.py covers those), as in test_modern_archs.py.
IMAGE_SIZE = {"inception_v3": 24}
MEASURE = {"latency_runs": 2, "warmup_runs": 1, "paired_rounds": 0, "batch_size": 4, "deploy": False}


# ResNet-32, -56 and -110 are the same builder and block as ResNet-20 at other depths (their structure is
# checked above against the published figures), so end to end they would add time and no new code path.
END_TO_END = [a for a in NEW_ARCHS if a not in ("resnet32", "resnet56", "resnet110")]


@pytest.mark.parametrize("arch", END_TO_END)
def test_baseline_prune_quantize_and_reload_each_new_arch(arch, session_home):
    size = IMAGE_SIZE.get(arch, 16)

    def job(model, method, params=None, onnx=False):
        # in this process: three CLI processes' imports would cost more than these tiny jobs
        return run_here({"data": {**DATA, "image_size": size}, "model": model,
                         "method": {"name": method, "params": params or {}}, "train": {"epochs": 1},
                         "measure": {**MEASURE, "onnx": onnx}}, session_home)

    base = job({"arch": arch}, "baseline")
    pruned = job({"from_run": base["run_id"]}, "prune_structured", {"ratio": 0.3, "finetune_epochs": 1}, onnx=True)
    # format pinned: "auto" keeps layers FP32 where a one-epoch model's agreement misses 97 %, and this test
    # is about the all-INT8 bundle (test_int8_auto covers the fallback)
    int8 = job({"from_run": pruned["run_id"]}, "quantize_int8", {"calibration_batches": 1, "format": "qdq"})
    assert pruned["macs"] < base["macs"] and pruned["params"] < base["params"]

    # The pruned bundle rebuilds its architecture with the cut widths, and computes what its ONNX file does.
    model, bundle = export.load_model(pruned["checkpoint"])
    assert bundle["arch"] == arch and measure.count_params(model) == pruned["params"]
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        ours = model.eval()(x).numpy()
    sess = export.onnx_session(pruned["onnx"])
    theirs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(theirs, ours, rtol=1e-3, atol=1e-3)

    # The INT8 bundle reloads as an ONNX Runtime model of the pruned one, and is the smaller file.
    predict, b8 = export.load_predictor(int8["checkpoint"])
    assert b8["kind"] == export.ONNX_INT8 and b8["arch"] == arch and predict(x).shape == (3, 10)
    assert int8["precision"] == "int8" and int8["size_bytes"] < 0.5 * pruned["size_bytes"]
