"""Modern nets in the registry: ViT-B/16, ConvNeXt-T, RegNetY-400MF, EfficientNet-V2-S against
torchvision's published sizes, the small ViT for 32x32 learning from scratch, what structured pruning
does to a transformer, and each one end to end on a tiny configuration."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import export, measure, models
from engine.methods.pruning import surgery
from engine.methods.pruning.criterion import channel_importance
from engine.spec import SpecError


# torchvision's model documentation ("Table of all available classification weights",
# https://pytorch.org/vision/stable/models.html#table-of-all-available-classification-weights, and each
# weight's page) gives Params and GFLOPS (which are MACs) at the weights' crop size, 1000 classes; the same
# figures are each weight's ``meta`` (``num_params``, ``_ops``), checked here against the installed copy too.
PUBLISHED = [
    ("vit_b_16", "ViT_B_16_Weights", 224, 86_567_656, 17.564e9),
    ("convnext_tiny", "ConvNeXt_Tiny_Weights", 224, 28_589_128, 4.456e9),
    ("regnet_y_400mf", "RegNet_Y_400MF_Weights", 224, 4_344_144, 0.402e9),
    ("efficientnet_v2_s", "EfficientNet_V2_S_Weights", 384, 21_458_488, 8.366e9),
]


@pytest.mark.fast
@pytest.mark.parametrize("arch,weights,size,params,macs", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_params_and_macs_match_torchvisions_published_figures(arch, weights, size, params, macs):
    import torchvision.models as tvm
    meta = getattr(tvm, weights).IMAGENET1K_V1.meta
    assert (meta["num_params"], meta["_ops"]) == (params, pytest.approx(macs / 1e9, abs=1e-3))
    m = models.build(arch, 1000)
    assert measure.count_params(m) == pytest.approx(params, rel=0.01)
    # ViT-B/16's attention products are 4 % of its MACs: counted only if attention is seen into.
    assert measure.count_macs(m, (3, size, size))["macs"] == pytest.approx(macs, rel=0.01)


@pytest.mark.fast
def test_vision_transformers_refuse_any_other_image_size_naming_the_one_they_take():
    vit = models.build("vit_cifar", 10)
    for side in (28, 64):
        with pytest.raises(SpecError, match="takes 32x32 images only.*data.image_size to 32") as e:
            models.check_input_fits(vit, "vit_cifar", (3, side, side), "model.arch")
        assert e.value.field == "model.arch"
    models.check_input_fits(vit, "vit_cifar", (3, 32, 32), "model.arch")
    with pytest.raises(SpecError, match="no small-input stem.*vit_cifar") as e:
        models.build("vit_b_16", 10, small_input=True)
    assert e.value.field == "model.small_input"


@pytest.mark.fast
def test_small_vit_cuts_a_32px_image_into_64_patches_of_4x4():
    vit = models.build("vit_cifar", 10)
    tokens = {}
    vit.encoder.register_forward_hook(lambda _m, x, _y: tokens.update(n=x[0].shape[1]))
    with torch.no_grad():
        assert vit.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert vit.patch_size == 4 and tokens["n"] == 64 + 1  # 8x8 patches and the class token


@pytest.mark.fast
def test_pruning_a_vit_narrows_each_mlp_and_keeps_the_residual_width():
    vit = models.build("vit_cifar", 10).eval()
    x = torch.randn(2, 3, 32, 32)
    surgery.prune_step(surgery.make_pruner(vit, (3, 32, 32), channel_importance("l1"), 0.5))
    for block in vit.encoder.layers:
        assert block.mlp[0].out_features == block.mlp[3].in_features == 192  # 384 halved
        assert block.mlp[3].out_features == block.self_attention.embed_dim == 192
    # The bundle's manifest rebuilds it (class token and position embeddings included) to the same outputs.
    fresh = export.apply_manifest(models.build("vit_cifar", 10), export.manifest(vit))
    fresh.load_state_dict(vit.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), vit(x))


@pytest.mark.fast
@pytest.mark.parametrize("arch", ["vit_cifar", "vit_b_16"])
def test_head_pruning_removes_whole_heads_and_the_bundle_rebuilds_them(arch):
    from engine.attention import HeadAttention
    from engine.methods.pruning import heads
    side = 32 if arch == "vit_cifar" else 224
    shape, x = (3, side, side), torch.randn(1, 3, side, side)
    vit = models.build(arch, 10).eval()
    count = measure.count_macs if arch == "vit_cifar" else (lambda m, _s: {"macs": measure.count_params(m)})
    with torch.no_grad():  # (ViT-B/16's 17 GMACs are counted in 6 s: its parameters stand in for them)
        before, macs = vit(x), count(vit, shape)["macs"]
    initial = heads.make_prunable(vit)  # nn.MultiheadAttention -> HeadAttention: the same network
    with torch.no_grad():
        torch.testing.assert_close(vit(x), before, rtol=1e-4, atol=1e-4)
    assert count(vit, shape)["macs"] == macs  # the attention products are counted as before
    attn = vit.encoder.layers[0].self_attention
    n, d = attn.num_heads, attn.head_dim
    with torch.no_grad():  # make head 1 the least important of the first block: it is one to go
        for lin in (attn.q, attn.k, attn.v):
            lin.weight[d:2 * d] *= 1e-3
    drop = torch.argsort(heads.head_scores(attn, "l1"))[:n - heads.kept(n, 0.34)].tolist()
    survivors = [i for i in range(n) if i not in drop]
    q_before = attn.q.weight.detach().reshape(n, d, -1).clone()
    heads.prune_heads(vit, initial, 0.34, "l1")
    assert 1 in drop and set(heads.head_counts(vit).values()) == {heads.kept(n, 0.34)} and heads.kept(n, 0.34) < n
    assert isinstance(attn, HeadAttention) and attn.q.out_features == len(survivors) * d
    torch.testing.assert_close(attn.q.weight.detach(), q_before[survivors].reshape(len(survivors) * d, -1))
    assert vit.encoder.layers[0].mlp[3].out_features == attn.embed_dim  # the residual stream keeps its width
    assert count(vit, shape)["macs"] < macs
    man = export.manifest(vit)
    assert man["encoder.layers.encoder_layer_0.self_attention"]["num_heads"] == heads.kept(n, 0.34)
    fresh = export.apply_manifest(models.build(arch, 10), man)
    fresh.load_state_dict(vit.state_dict())
    bad = {**man, "encoder.layers.encoder_layer_0.self_attention": {**man["encoder.layers.encoder_layer_0.self_attention"],
                                                                   "num_heads": n}}
    with pytest.raises(export.BundleError, match="heads of .* do not match"):  # a damaged bundle, named
        export.apply_manifest(models.build(arch, 10), bad)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), vit(x))


@pytest.mark.fast
def test_a_head_pruned_vit_can_be_factorised_and_rebuilds_but_not_the_other_way_round():
    from engine.methods import lowrank
    from engine.methods.pruning import heads
    from engine.methods.pruning.structured import require_heads
    vit = models.build("vit_cifar", 10).eval()
    heads.prune_heads(vit, heads.make_prunable(vit), 0.34, "l1")
    plan = lowrank.plan_ranks(vit, (3, 32, 32), None, 0.25)
    assert "encoder.layers.encoder_layer_0.self_attention.q" in plan  # called as a layer now: factorisable
    lowrank.apply_plan(vit, plan)
    fresh = export.apply_manifest(models.build("vit_cifar", 10), export.manifest(vit))
    fresh.load_state_dict(vit.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), vit(x))
    with pytest.raises(SpecError, match="head_ratio.*factorised"):
        require_heads(vit, 0.5, "vit_cifar")

@pytest.mark.fast
def test_head_ratio_is_refused_on_a_net_without_attention_and_when_it_removes_no_head():
    from engine.methods.pruning.structured import require_heads
    with pytest.raises(SpecError, match="head_ratio.*resnet20 has none"):
        require_heads(models.build("resnet20", 10), 0.5, "resnet20")
    with pytest.raises(SpecError, match="head_ratio.*rounds down to none removed"):
        require_heads(models.build("vit_cifar", 10), 0.2, "vit_cifar")  # 0.2 of 3 heads
    assert require_heads(models.build("resnet20", 10), 0.0, "resnet20") == {}
    from engine.validation import check_spec  # an arch known when queued is refused then
    with pytest.raises(SpecError, match="head_ratio.*resnet20 has none"):
        check_spec({"data": {"name": "digits"}, "model": {"arch": "resnet20"},
                    "method": {"name": "prune_structured", "params": {"head_ratio": 0.5}}})

@pytest.mark.fast
def test_convnext_layer_scale_and_layer_norms_shrink_with_their_channels_and_rebuild():
    net = models.build("convnext_tiny", 10, small_input=True).eval()
    x = torch.randn(1, 3, 32, 32)
    before = measure.count_params(net)
    surgery.prune_step(surgery.make_pruner(net, (3, 32, 32), channel_importance("l1"), 0.3))
    block = net.features[1][0]
    assert block.layer_scale.shape[0] == block.block[0].out_channels < 96
    assert measure.count_params(net) < 0.6 * before
    fresh = export.apply_manifest(models.build("convnext_tiny", 10, small_input=True), export.manifest(net))
    fresh.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), net(x))


# -- end to end on a tiny configuration -----------------------------------------------------------
# A small validation split (nothing here is judged on one) and no deployment runtimes (test_runtimes.py times
# those): what is left is the chain itself, a few seconds a job.
DATA = {"name": "digits", "limit": 32, "test_limit": 16, "val_fraction": 0.02, "image_size": 32, "batch_size": 16}
MEASURE = {"latency_runs": 2, "warmup_runs": 1, "paired_rounds": 0, "batch_size": 4, "deploy": False}


# The transformer here: the convolutional ones are trained, pruned and quantised the same way (the CIFAR
# nets of test_archs.py cover that path); on CPU each costs 1-4 minutes, ConvNeXt-T most.
@pytest.mark.parametrize("arch", ["vit_cifar"])
def test_baseline_prune_quantize_and_reload_each_modern_arch(arch, session_home):
    from engine.runner import run_spec  # in this process: three CLI processes' imports cost more than the jobs
    from engine.store import Store

    def job(model, method, params=None, onnx=False):
        return run_spec({"data": DATA, "model": model, "method": {"name": method, "params": params or {}},
                         "train": {"epochs": 1}, "measure": {**MEASURE, "onnx": onnx}}, Store(session_home))

    base = job({"arch": arch}, "baseline")
    # trained from scratch under the ViT recipe, recorded as such (the spec gave no optimizer)
    assert base["recipe"]["optimizer"] == "adamw" and base["recipe"]["label_smoothing"] == 0.1
    assert base["recipe"]["defaults"].startswith("vit recipe") and base["spec"]["train"]["optimizer"] is None
    # MLP channels and attention heads (a third of 3: one per block) go together.
    pruned = job({"from_run": base["run_id"]}, "prune_structured",
                 {"ratio": 0.3, "head_ratio": 0.34, "finetune_epochs": 0}, onnx=True)
    int8 = job({"from_run": pruned["run_id"]}, "quantize_int8", {"calibration_batches": 1})
    assert pruned["macs"] < base["macs"] and pruned["params"] < base["params"]
    model, bundle = export.load_model(pruned["checkpoint"])
    assert bundle["arch"] == arch and measure.count_params(model) == pruned["params"]
    assert [b.self_attention.num_heads for b in model.encoder.layers] == [2] * 6
    assert set(pruned["attention_heads"].values()) == {2} and pruned["head_ratio"] == 0.34
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = model.eval()(x).numpy()
    sess = export.onnx_session(pruned["onnx"])
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0], ours, rtol=1e-3, atol=1e-3)
    predict, b8 = export.load_predictor(int8["checkpoint"])
    assert b8["arch"] == arch and predict(x).shape == (2, 10) and int8["precision"] == "int8"


@pytest.mark.fast
def test_low_rank_decomposes_a_vits_mlps_but_leaves_attention_whole():
    from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

    from engine.methods import lowrank
    vit = models.build("vit_cifar", 10).eval()
    plan = lowrank.plan_ranks(vit, (3, 32, 32), None, 0.25)
    assert plan and not any(isinstance(vit.get_submodule(n), NonDynamicallyQuantizableLinear) for n in plan)
    assert any(n.endswith("mlp.0") for n in plan)
    before = measure.count_macs(vit, (3, 32, 32))["macs"]
    lowrank.apply_plan(vit, plan)
    with torch.no_grad():
        assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 10)  # the attention still runs
    assert measure.count_macs(vit, (3, 32, 32))["macs"] < before


@pytest.mark.fast
def test_slimming_refuses_what_it_cannot_do_on_modern_nets_before_any_training():
    from engine.methods.pruning.slimming import slimming

    class Ctx:  # what slimming reads before it would train; anything more would be a failure of this test
        input_shape = (3, 32, 32)

    ctx = Ctx()
    ctx.arch = "convnext_tiny"
    with pytest.raises(SpecError, match="no batch norm") as e:
        slimming(models.build("convnext_tiny", 10, small_input=True), ctx, {"expand": False})
    assert e.value.field == "model"
    ctx.arch = "regnet_y_400mf"
    with pytest.raises(SpecError, match="grouped convolutions") as e:
        slimming(models.build("regnet_y_400mf", 10, small_input=True), ctx, {"expand": True})
    assert e.value.field == "method.params.expand"


@pytest.mark.fast
def test_a_vit_trains_under_the_small_vit_recipe_unless_the_spec_chooses_the_optimizer():
    from engine.spec import TrainSpec
    from engine.training import family_of, param_groups, resolved
    vit = resolved(TrainSpec(), "vit")
    assert (vit.optimizer, vit.weight_decay, vit.label_smoothing) == ("adamw", 0.05, 0.1)
    cnn = resolved(TrainSpec(), "resnet")
    assert (cnn.optimizer, cnn.weight_decay, cnn.label_smoothing) == ("sgd", 5e-4, 0.0)
    chosen = resolved(TrainSpec(optimizer="sgd"), "vit")  # a given optimizer: the default recipe's other values
    assert (chosen.optimizer, chosen.weight_decay, chosen.label_smoothing) == ("sgd", 5e-4, 0.0)
    partly = resolved(TrainSpec(label_smoothing=0.0, weight_decay=0.1), "vit")  # what is given is kept
    assert (partly.optimizer, partly.weight_decay, partly.label_smoothing) == ("adamw", 0.1, 0.0)
    model = models.build("vit_cifar", 10)
    assert family_of(model) == "vit" and family_of(models.build("resnet20", 10)) is None  # a student's own kind
    decayed, kept = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    spared = {names[id(p)] for p in kept["params"]}
    assert {"class_token", "encoder.pos_embedding"} <= spared and kept["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and not spared & {names[id(p)] for p in decayed["params"]}
