"""The literature recipes' mechanics on tiny data: Trained Rank Pruning truncates while it trains and
its ranks fall, the spatial decomposition is exact at full rank, gradual magnitude pruning follows
Zhu & Gupta's cubic schedule to its target, attention transfer changes the loss and trains, and the
two layer rewrites replace what they say (and refuse nets without such layers before training)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from engine import data as D, measure, models
from engine.context import Context
from engine.errors import SpecError
from engine.methods import validate
from engine.methods import lowrank as L
from engine.methods.attention import at_loss, pair_stages
from engine.methods.pruning.gradual import cubic_sparsity, update_steps
from engine.spec import DataSpec, JobSpec

DIGITS = DataSpec(name="digits", limit=256, test_limit=100)


def context(model: nn.Module, tmp_path, arch: str = "resnet20", spec_extra: dict | None = None,
            data: DataSpec = DIGITS) -> Context:
    spec = JobSpec.from_dict({"data": {"name": "digits"}, "model": {"arch": arch}, "method": {"name": "baseline"},
                              "train": {"epochs": 1, "bn_recalibration_images": 128}, **(spec_extra or {})})
    return Context(spec=spec, data=D.load(data), device=torch.device("cpu"), store=None, run_id="test",
                   run_dir=tmp_path, arch=arch, small_input=True, load_run=None, run_child=None,
                   base=copy.deepcopy(model).eval())


def small_resnet() -> nn.Module:
    torch.manual_seed(0)
    return models.build("resnet20", 10, True, 0.5)


# -- low-rank ------------------------------------------------------------------------------------
def test_trp_truncates_during_training_and_its_ranks_fall(tmp_path):
    """At the defaults (route trp, energy 0.9) with a truncation every 2 steps: each truncation lowers
    the mean rank share, the weights handed to the cut are low-rank, and the cut is taken at those ranks."""
    net = small_resnet()
    ctx = context(net, tmp_path)
    names = [n for n, m in net.named_modules() if L.eligible(m)]
    steps = len(ctx.data.loader("train"))
    assert steps % 2 == 0  # the last step truncates: the weights the cut sees are exactly low-rank
    shares = L.trp_training(net, ctx, names, "channel", 0.9, None, 1e-3, 2, 1)
    assert len(shares) == steps // 2 and all(b < a for a, b in zip(shares, shares[1:]))
    for n in names:
        mat = L.weight_matrix(net.get_submodule(n)).detach()
        assert torch.linalg.matrix_rank(mat) < min(mat.shape), n

    net = small_resnet()
    ctx = context(net, tmp_path)
    params = validate("lowrank_svd", {"trp_interval": 2, "reg_epochs": 1, "finetune_epochs": 0})
    assert params["route"] == "trp" and params["nuclear_reg"] > 0
    out = L.lowrank_svd(net, ctx, params)
    assert ctx.extra["lowrank_rank_share"] < ctx.extra["lowrank_rank_share_before"] - 0.1
    assert measure.count_macs(out, ctx.input_shape)["macs"] == \
        measure.count_macs(ctx.base, ctx.input_shape)["macs"] - ctx.extra["lowrank_macs_saved"]
    assert any(h["phase"] == "lowrank-trp" for h in ctx.history)


def test_svd_reg_penalties_lower_the_ranks_at_their_defaults(tmp_path):
    """Two epochs of all 1,437 digits training images (40 steps): the L1 pull on the singular values
    is per step, so a shorter schedule moves them less."""
    torch.manual_seed(0)
    net = models.build("resnet20", 10, True, 0.25)
    ctx = context(net, tmp_path, data=DataSpec(name="digits", test_limit=100))
    params = validate("lowrank_svd", {"route": "svd_reg"})
    assert params["sv_sparsity"] > 0 and params["orthogonal_reg"] > 0
    names = [n for n, m in net.named_modules() if L.eligible(m)]
    before = L.rank_share(net, names, 0.9, None, "channel")
    L.regularised_training(net, ctx, names, params["orthogonal_reg"], params["sv_sparsity"], params["reg_epochs"])
    assert L.rank_share(net, names, 0.9, None, "channel") < before - 0.01


@pytest.mark.fast
def test_svd_reg_without_penalties_is_refused():
    with pytest.raises(SpecError) as e:
        validate("lowrank_svd", {"route": "svd_reg", "orthogonal_reg": 0, "sv_sparsity": 0})
    assert e.value.field == "method.params.sv_sparsity"


@pytest.mark.fast
def test_one_shot_energy_that_saves_almost_nothing_is_refused_before_training(tmp_path, monkeypatch):
    net = small_resnet()
    ctx = context(net, tmp_path)
    monkeypatch.setattr(ctx, "fit", lambda *a, **k: pytest.fail("trained before refusing"))
    with pytest.raises(SpecError, match="almost unchanged") as e:
        L.lowrank_svd(net, ctx, validate("lowrank_svd", {"route": "one_shot", "energy": 0.999}))
    assert e.value.field == "method.params.energy"


@pytest.mark.fast
def test_a_trp_cut_that_saves_almost_nothing_does_not_suggest_trp_again():
    net = small_resnet()
    shape = (3, 16, 16)
    plan = L.plan_ranks(net, shape, 0.9999, None, "channel")
    msgs = {}
    for route in ("one_shot", "trp", "svd_reg"):
        with pytest.raises(SpecError, match="almost unchanged") as e:
            L.require_saving(net, shape, 0.9999, None, plan, "" if route == "one_shot" else f" after {route} training",
                             "channel", route)
        msgs[route] = str(e.value)
    assert "route trp" in msgs["one_shot"] and "route trp" in msgs["svd_reg"]
    assert "route trp" not in msgs["trp"] and "reg_epochs" in msgs["trp"]

@pytest.mark.fast
def test_spatial_decomposition_is_exact_at_full_rank_and_costs_what_the_plan_says():
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, 3, stride=2, padding=1, bias=True)
    x = torch.randn(2, 5, 9, 9)
    pair = L.decompose(conv, 15, "spatial")
    assert [m.kernel_size for m in pair] == [(3, 1), (1, 3)]
    assert (pair(x) - conv(x)).abs().max() < 1e-5
    net = small_resnet().eval()
    plan = L.plan_ranks(net, (3, 8, 8), None, 0.25, "spatial")
    assert plan and all(p["decomposition"] == "spatial" for p in plan.values())
    macs = measure.count_macs(net, (3, 8, 8))["macs"]
    L.apply_plan(net, plan)
    assert macs - measure.count_macs(net, (3, 8, 8))["macs"] == \
        sum(p["macs_before"] - p["macs_after"] for p in plan.values())
    assert isinstance(net.get_submodule("fc"), nn.Linear)  # spatial leaves linears alone


# -- gradual magnitude pruning -------------------------------------------------------------------
@pytest.mark.fast
def test_cubic_schedule_starts_fast_and_ends_at_the_target():
    s = [cubic_sparsity(0.9, k, 10) for k in range(11)]
    assert s[0] == 0 and s[-1] == pytest.approx(0.9)
    steps = [b - a for a, b in zip(s, s[1:])]
    assert all(x > 0 for x in steps) and all(b < a for a, b in zip(steps, steps[1:]))
    assert update_steps(100, 0.75, 10) == [10, 20, 30, 40, 50, 60, 70]
    assert update_steps(3, 0.5, 10) == [2]  # fewer steps than one interval: still one update, at the end


def test_gradual_pruning_reaches_ninety_percent_while_it_fine_tunes(tmp_path):
    from engine.methods.pruning.unstructured import prune_unstructured
    net = small_resnet()
    ctx = context(net, tmp_path)
    ctx.extra["base_macs"] = measure.count_macs(net, ctx.input_shape)["macs"]
    params = validate("prune_unstructured", {"amount": 0.9, "schedule": "gradual", "finetune_epochs": 2,
                                             "prune_interval": 1})
    out = prune_unstructured(net, ctx, params)
    sched = ctx.extra["sparsity_schedule"]
    assert len(sched) > 2 and sched == sorted(sched) and sched[-1] == pytest.approx(0.9)
    assert abs(measure.sparsity(out) - 0.9) < 0.005
    assert [h["phase"] for h in ctx.history] == ["gradual pruning"] * 2
    # the ramp spans both epochs, not a one-shot cut at the end: an update at every scheduled step up to
    # prune_end (0.75) of the training, the last in the second epoch, then a quarter of the steps of
    # recovery at the final sparsity, and the batch-norm statistics re-estimated after it
    per_epoch = len(ctx.data.loader("train"))
    steps = update_steps(2 * per_epoch, 0.75, 1)
    assert len(sched) == len(steps) and steps[0] <= per_epoch < steps[-1] <= 0.75 * 2 * per_epoch
    assert sched[len([s for s in steps if s <= per_epoch]) - 1] < 0.9 * 0.99  # epoch 1 ends below the target
    assert ctx.recalibrated.get("gradual pruning") == 1
    # keep_dense ends (the default): the stem conv and the classifier stay dense, the rest is pruned harder
    # so that 90 % of all conv/linear weights are still zero
    layer = ctx.extra["layer_sparsity"]
    assert ctx.extra["dense_layers"] == ["conv1", "fc"] and layer["conv1"] == 0 and layer["fc"] == 0
    rest = [m.weight for n, m in out.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in ("conv1", "fc")]
    zeros, size = sum(int((w == 0).sum()) for w in rest), sum(w.numel() for w in rest)
    ends = out.conv1.weight.numel() + out.fc.weight.numel()
    assert zeros / size == pytest.approx(0.9 * (size + ends) / size, abs=0.005) and zeros / size > 0.9
    assert (out.conv1.weight != 0).all() and (out.fc.weight != 0).all()


@pytest.mark.fast
def test_keep_dense_finds_the_stem_and_classifier_by_running_the_net():
    """The first and last conv/linear a forward pass calls, whatever order the modules were defined in;
    the probe leaves batch-norm statistics and the training mode as they were."""
    from engine.methods.pruning.unstructured import end_layers, split_dense

    class Reordered(nn.Module):   # the head is defined first, the stem last
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8, 10)
            self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.stem = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return self.head(self.body(self.stem(x)).mean((2, 3)))

    net = Reordered().train()
    stats = net.body[1].running_mean.clone()
    assert end_layers(net, (3, 8, 8)) == ["stem", "head"]
    assert net.training and torch.equal(net.body[1].running_mean, stats)
    assert end_layers(models.build("mobilenet_v2", 10, True), (3, 32, 32)) == ["features.0.0", "classifier.1"]
    # the pruned layers' own sparsity makes `amount` of all conv/linear weights zero
    pruned, dense, within = split_dense(net, (3, 8, 8), {"keep_dense": "ends", "amount": 0.3})
    sizes = {"stem": 216, "body.0": 576, "head": 80}
    assert [n for n, _ in pruned] == ["body.0"] and dense == ["stem", "head"]
    assert within == pytest.approx(0.3 * sum(sizes.values()) / sizes["body.0"])
    pruned, dense, within = split_dense(net, (3, 8, 8), {"keep_dense": "none", "amount": 0.3})
    assert len(pruned) == 3 and dense == [] and within == 0.3
    # keeping the ends dense where they hold too much of the net to reach the amount is refused, not rounded
    with pytest.raises(SpecError) as e:
        split_dense(net, (3, 8, 8), {"keep_dense": "ends", "amount": 0.7})
    assert e.value.field == "method.params.keep_dense" and "keep_dense to none" in str(e.value)


@pytest.mark.fast
def test_gradual_schedule_fields_are_checked():
    with pytest.raises(SpecError) as e:
        validate("prune_unstructured", {"schedule": "gradual", "steps": 3})
    assert e.value.field == "method.params.steps"
    with pytest.raises(SpecError) as e:
        validate("prune_unstructured", {"schedule": "gradual", "finetune_epochs": 0})
    assert e.value.field == "method.params.finetune_epochs"


# -- attention transfer --------------------------------------------------------------------------
@pytest.mark.fast
def test_attention_pairs_stage_outputs_by_resolution_and_the_loss_sees_them():
    teacher, student = models.build("resnet20", 10, True), models.build("resnet20", 10, True, 0.25)
    pairs = pair_stages(student, teacher, (3, 16, 16))
    assert pairs == [("layer1", "layer1"), ("layer2", "layer2"), ("layer3", "layer3")]
    torch.manual_seed(0)
    a, b = torch.randn(4, 8, 6, 6), torch.randn(4, 16, 6, 6)
    assert at_loss([a], [a * 3], 1000.0) < 1e-6          # the maps are scale-free: same pattern, no loss
    assert at_loss([a], [b], 1000.0) > 0.1                # channel counts may differ


def test_attention_transfer_changes_the_loss_and_trains(tmp_path):
    from engine.methods.distill import distill
    torch.manual_seed(0)
    teacher = models.build("resnet20", 10, True, 0.5)
    ctx = context(teacher, tmp_path)
    losses = {}
    for loss in ("at", "kd"):
        params = validate("distill", {"student": "resnet20", "width": 0.25, "epochs": 3, "loss": loss,
                                      "alpha": 0.0})  # alpha 0: kd is plain cross-entropy, the AT-free twin
        c = context(teacher, tmp_path)
        student = distill(copy.deepcopy(teacher), c, params)
        losses[loss] = [h["train_loss"] for h in c.history]
        assert not any(m._forward_hooks for m in student.modules())   # no tap left on the saved model
    assert c is not ctx and losses["at"][0] > losses["kd"][0] + 0.01     # the attention term is in the loss
    assert losses["at"][-1] < losses["at"][0]                            # and it trains
    with pytest.raises(SpecError) as e:
        validate("distill", {"loss": "at"}, JobSpec.from_dict({"data": {"name": "digits"}, "model": {"arch": "resnet20"},
                                                               "method": {"name": "distill"}, "train": {"devices": 2}}))
    assert e.value.field == "method.params.loss"


# -- the two rewrites ----------------------------------------------------------------------------
@pytest.mark.fast
def test_pool_to_conv_starts_as_the_average_pool_and_replaces_every_stride_two_pool():
    torch.manual_seed(0)
    from engine.methods.rewrites import pool_to_conv, strided_conv
    x = torch.randn(2, 4, 8, 8)
    conv = strided_conv(4, x.shape, (2, 4, 4, 4))
    assert torch.allclose(conv(x), nn.AvgPool2d(3, 2, 1)(x), atol=1e-6)
    # VGG's 2 x 2 max pools and a ceil-mode 3 x 3 one (SqueezeNet's), on odd and even sizes
    for size in (15, 16):
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2, 2), nn.Conv2d(4, 6, 3, padding=1),
                              nn.MaxPool2d(3, 2, ceil_mode=True), nn.AvgPool2d(3, 1, 1), nn.Flatten(),
                              nn.LazyLinear(3)).eval()
        net(torch.zeros(1, 3, size, size))
        y = net(torch.ones(1, 3, size, size))
        report = pool_to_conv(net, (3, size, size), "test")
        assert sorted(report) == ["1", "3"]                              # the stride-1 pool stays
        assert net(torch.ones(1, 3, size, size)).shape == y.shape
        assert isinstance(net[1], nn.Conv2d) and net[1].stride == (2, 2) and net[3].out_channels == 6


@pytest.mark.fast
def test_relu_activation_swaps_hardswish_and_still_trains():
    from engine.methods.rewrites import relu_activation
    net = models.build("mobilenet_v3_small", 10, True)
    n = sum(isinstance(m, nn.Hardswish) for m in net.modules())
    report = relu_activation(net, "mobilenet_v3_small")
    assert len(report) == n > 0 and not any(isinstance(m, nn.Hardswish) for m in net.modules())
    net.train()(torch.randn(2, 3, 16, 16)).sum().backward()  # its in-place dropout would break ReLU's backward


@pytest.mark.fast
@pytest.mark.parametrize("mode", ["pool_to_conv", "relu_activation"])
def test_rewrites_refuse_a_net_without_such_a_layer_before_training(tmp_path, monkeypatch, mode):
    from engine.methods.factorize import factorize
    net = small_resnet()
    ctx = context(net, tmp_path)
    monkeypatch.setattr(ctx, "fit", lambda *a, **k: pytest.fail("trained before refusing"))
    with pytest.raises(SpecError, match=mode) as e:
        factorize(net, ctx, validate("factorize", {"mode": mode}))
    assert e.value.field == "method.params.mode"
