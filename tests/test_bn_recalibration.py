"""Batch-norm statistics re-estimated after every cut; SFP's zeroed filters grow back; rewrites that
would change (almost) nothing are refused before they train."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from engine import data as D, models, training
from engine.context import Context
from engine.errors import SpecError
from engine.methods import validate
from engine.spec import DataSpec, JobSpec

DIGITS = DataSpec(name="digits", limit=256, test_limit=200)


def context(model: nn.Module, tmp_path, images: int = 512, arch: str = "resnet18") -> Context:
    spec = JobSpec.from_dict({"data": {"name": "digits"}, "model": {"arch": arch}, "method": {"name": "baseline"},
                              "train": {"epochs": 1, "bn_recalibration_images": images}})
    return Context(spec=spec, data=D.load(DIGITS), device=torch.device("cpu"), store=None, run_id="test",
                   run_dir=tmp_path, arch=arch, small_input=True, load_run=None, run_child=None,
                   base=copy.deepcopy(model).eval())


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.drop = nn.Dropout(0.9)   # before the batch norm: left on, it would skew the statistics
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.drop(self.conv(x)))


@pytest.mark.fast
def test_recalibration_sets_the_statistics_of_the_images_seen_and_restores_modes():
    torch.manual_seed(0)
    net, data = ConvBN(), D.load(DIGITS)
    net.train()
    net.bn.momentum = 0.3
    assert training.recalibrate_bn(net, data, 128) == 128
    assert net.training and net.drop.training and net.bn.momentum == 0.3
    with torch.no_grad():   # the same augmented batches (the loader is seeded), dropout off
        feats = torch.cat([net.conv(x) for x, _ in data.loader("train", train=True, limit=128)])
    assert torch.allclose(net.bn.running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    # equal weight per batch of 64: the mean of two batch variances (unbiased), not an EMA
    halves = feats.split(64)
    var = torch.stack([h.transpose(0, 1).flatten(1).var(1) for h in halves]).mean(0)
    assert torch.allclose(net.bn.running_var, var, rtol=1e-4)


@pytest.mark.fast
def test_zero_images_leaves_the_statistics_alone():
    net = ConvBN()
    before = copy.deepcopy(net.bn.state_dict())
    assert training.recalibrate_bn(net, D.load(DIGITS), 0) == 0
    assert all(torch.equal(before[k], v) for k, v in net.bn.state_dict().items())


@pytest.mark.fast
@pytest.mark.parametrize("images", [1, -5, 200_000])
def test_bad_image_counts_are_refused_naming_the_field(images):
    with pytest.raises(SpecError) as e:
        JobSpec.from_dict({"model": {"arch": "resnet18"}, "train": {"bn_recalibration_images": images}})
    assert e.value.field == "train.bn_recalibration_images"


@pytest.mark.fast
def test_sensitivity_scores_each_probe_on_recalibrated_statistics(tmp_path, monkeypatch):
    from engine.methods.pruning.sensitivity import sensitivity
    net = models.build("resnet18", 10, small_input=True)
    ctx = context(net, tmp_path)
    recalibrated, scored = set(), []
    real_recal, real_eval = ctx.recalibrate, ctx.evaluate
    monkeypatch.setattr(ctx, "recalibrate", lambda m, after: (recalibrated.add(id(m)), real_recal(m, after))[1])
    monkeypatch.setattr(ctx, "evaluate", lambda m, *a, **k: (scored.append(id(m)), real_eval(m, *a, **k))[1])
    sensitivity(net, ctx, {"ratios": [0.25, 0.5], "criterion": "l1", "max_loss": 0.01, "max_layers": 2,
                           "grad_batches": 1})
    probes = scored[1:]          # the first score is the base's, which was not cut
    assert len(probes) == 4 and all(p in recalibrated for p in probes) and id(net) not in recalibrated
    assert "sensitivity probes (x4)" in ctx.notes()[0]


def trained_like_resnet(seed: int = 0) -> nn.Module:
    """A CIFAR ResNet-20 whose batch norms carry a trained net's non-zero shifts and statistics: at init
    (shift 0) a silenced channel feeds ReLU exactly 0 and gets no gradient, and the removal has no
    constant to lose."""
    torch.manual_seed(seed)
    net = models.build("resnet20", 10, small_input=True)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.uniform_(0.1, 0.5), m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    return net


@pytest.mark.fast
@pytest.mark.parametrize("zero", ["bn_scale", "filter"])
def test_soft_filter_pruning_lets_zeroed_filters_grow_back(tmp_path, monkeypatch, zero):
    """He et al.: a channel zeroed at one epoch end keeps its gradient and is non-zero after the next
    epoch's training (so it may escape the next zeroing). Zeroed is the filter or, by default, its
    batch-norm scale."""
    from engine.methods.pruning import soft_filter, surgery
    net = trained_like_resnet()
    ctx = context(net, tmp_path, arch="resnet20")
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d) and m.out_channels == 64)
    bn = next(b for b in net.modules() if isinstance(b, nn.BatchNorm2d) and b.num_features == 64)

    def live() -> torch.Tensor:
        return first.weight.detach().flatten(1).ne(0).any(1) if zero == "filter" else bn.weight.detach().ne(0)
    zeroed_at: list[torch.Tensor] = []
    real = surgery.zero_group

    def spy(group, shift=True, scale_only=False):
        n = real(group, shift, scale_only)
        zeroed_at.append(~live())
        return n
    monkeypatch.setattr(surgery, "zero_group", spy)
    after_epoch: list[torch.Tensor] = []
    real_fit = ctx.fit

    def fit(model, *a, on_epoch_end=None, **kw):  # look at the channels just before each zeroing
        def hook(m, epoch):
            after_epoch.append(live().clone())
            on_epoch_end(m, epoch)
        return real_fit(model, *a, on_epoch_end=hook, **kw)
    monkeypatch.setattr(ctx, "fit", fit)
    params = validate("soft_filter_pruning", {"ratio": 0.3, "epochs": 2, "finetune_epochs": 0, "zero": zero}, None)
    out = soft_filter.soft_filter_pruning(net, ctx, params)   # with the recipe's defaults filled in
    groups_per_zeroing = len(zeroed_at) // 3
    before_training = torch.stack(zeroed_at[:groups_per_zeroing]).any(0)   # zeroed before epoch 1
    assert before_training.any()
    assert (before_training & after_epoch[0]).any()          # some of them are non-zero after training
    assert ctx.extra["removed_were_zero"] == 1.0
    assert out(torch.zeros(2, 3, 8, 8)).shape == (2, 10)


@pytest.mark.fast
@pytest.mark.parametrize("zero", ["bn_scale", "filter"])
def test_soft_filter_pruning_hard_cut_removes_the_last_zeroed_and_changes_no_output(tmp_path, monkeypatch, zero):
    """The model just before the hard cut (after the last zeroing and its recalibration) and just
    after it, before the cut's own recalibration re-samples the statistics, give the same logits:
    exactly the channels zeroed last go, and nothing else changes."""
    from engine.methods.pruning import soft_filter
    net = trained_like_resnet(1)
    ctx = context(net, tmp_path, arch="resnet20")
    before: list[nn.Module] = []
    real_finetune, real_recalibrate = ctx.finetune, ctx.recalibrate

    def finetune(model, *a, **kw):  # the soft phase: keep the zeroed model it leaves
        r = real_finetune(model, *a, **kw)
        before.append(copy.deepcopy(model).eval())
        return r
    x = next(iter(ctx.data.loader("test", torch.device("cpu"))))[0][:32]
    logits: dict[str, torch.Tensor] = {}

    def recalibrate(model, after):
        if after == "removal":
            with torch.no_grad():
                logits["zeroed"], logits["cut"] = before[0](x), model.eval()(x)
        return real_recalibrate(model, after)
    monkeypatch.setattr(ctx, "finetune", finetune)
    monkeypatch.setattr(ctx, "recalibrate", recalibrate)
    params = validate("soft_filter_pruning", {"ratio": 0.3, "epochs": 1, "finetune_epochs": 0, "zero": zero}, None)
    out = soft_filter.soft_filter_pruning(net, ctx, params)
    assert ctx.extra["removed_channels"] == ctx.extra["zeroed_per_epoch"][-1] > 0
    assert ctx.extra["removed_were_zero"] == 1.0
    assert sum(p.numel() for p in out.parameters()) < sum(p.numel() for p in before[0].parameters())
    assert logits["zeroed"].abs().max() > 0.1    # a real network's logits, not a dead one's
    torch.testing.assert_close(logits["cut"], logits["zeroed"], rtol=1e-4, atol=1e-4)


@pytest.mark.fast
@pytest.mark.parametrize("arch, mode", [("mobilenet_v2", "asymmetric"), ("shufflenet_v2_x1_0", "depthwise_separable"),
                                        ("efficientnet_b0", "depthwise_separable")])
def test_factorize_refuses_a_rewrite_that_changes_almost_nothing(tmp_path, arch, mode, monkeypatch):
    from engine.methods.factorize import factorize
    net = models.build(arch, 10, small_input=True)
    ctx = context(net, tmp_path, arch=arch)
    monkeypatch.setattr(ctx, "fit", lambda *a, **k: pytest.fail("trained before refusing"))
    with pytest.raises(SpecError, match="of its MACs") as e:
        factorize(net, ctx, {"mode": mode, "mid_ratio": 1.0, "finetune_epochs": 1})
    assert e.value.field == "method.params.mode"


@pytest.mark.fast
def test_lowrank_refuses_a_truncation_that_changes_almost_nothing(tmp_path, monkeypatch):
    from engine.methods.lowrank import lowrank_svd
    torch.manual_seed(0)
    net = models.build("resnet18", 10, small_input=True)   # untrained: a flat spectrum, full rank at 0.999
    ctx = context(net, tmp_path)
    monkeypatch.setattr(ctx, "fit", lambda *a, **k: pytest.fail("trained before refusing"))
    params = validate("lowrank_svd", {"route": "one_shot", "energy": 0.999})
    with pytest.raises(SpecError, match="rank_ratio 0.25") as e:
        lowrank_svd(net, ctx, params)
    assert e.value.field == "method.params.energy"


def test_a_cut_without_fine_tune_keeps_most_of_the_base_only_with_recalibration(tiny_base):
    """A 30 % structured cut, scored without any fine-tune: re-estimated statistics keep it well above
    chance, near its base; with recalibration off (0) the same cut scores far lower."""
    from engine.runner import run_spec
    from engine.store import Store

    def cut(images: int) -> dict:
        spec = JobSpec.from_dict({"data": {"name": "digits"}, "model": {"from_run": tiny_base["run_id"]},
                                  "method": {"name": "prune_structured", "params": {"ratio": 0.3, "finetune_epochs": 0}},
                                  "train": {"epochs": 1, "bn_recalibration_images": images},
                                  "measure": {"onnx": False, "latency_runs": 3, "warmup_runs": 1, "paired_rounds": 0}})
        return run_spec(spec, Store())
    on, off = cut(512), cut(0)
    base = on["start_accuracy"]
    assert on["bn_recalibration_images"] == 512 and off["bn_recalibration_images"] == 0
    assert any("re-estimated on 512" in n for n in on["notes"]) and not any("re-estimated" in n for n in off["notes"])
    assert on["accuracy"] >= 0.75 * base
    assert on["accuracy"] - off["accuracy"] >= 0.2 * base
