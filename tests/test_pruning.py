"""Pruning methods prove their effect on tiny digits models: channels really removed, MACs down,
sparsity as requested, bundles smaller and reloadable in a fresh process, latency lower, bad
params refused with the field named."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from conftest import ROOT
from engine import data as D, export, measure, models
from engine.runner import JobFailed, run_spec
from engine.spec import JobSpec, SpecError
from engine.validation import check_spec
from engine.store import Store

DATA = {"name": "digits", "limit": 400, "test_limit": 300}
# The pruning tests check structure, MACs, sparsity and files, not timing: no paired timing rounds against the
# start, no export to every runtime, batch-8 throughput. resnet_half keeps the defaults' paired rounds and its
# ONNX export (its tests read its paired speed-up and ONNX agreement).
QUICK = {"onnx": False, "deploy": False, "paired_rounds": 0, "latency_runs": 3, "warmup_runs": 1, "batch_size": 8}
WITH_ONNX = {**QUICK, "onnx": True}
TIMED_WITH_ONNX = {"onnx": True, "latency_runs": 5, "warmup_runs": 1}


def run_method(model: dict, name: str, params: dict, measure_spec: dict = QUICK) -> dict:
    spec = {"data": DATA, "model": model, "method": {"name": name, "params": params}, "train": {"epochs": 1},
            "measure": measure_spec}
    return run_spec(JobSpec.from_dict(spec), Store())


def convs(path: str) -> dict[str, nn.Conv2d]:
    model, _ = export.load_model(path)
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def untrained_checkpoint(arch: str, tmp_path) -> tuple[dict, nn.Module]:
    """A fresh (untrained) bundle: enough to prove surgery without paying for a training run."""
    net = models.build(arch, 10, small_input=True)
    path = tmp_path / f"{arch}.pt"
    export.save_bundle(export.make_bundle(net, arch=arch, num_classes=10, small_input=True, meta={}), path)
    return {"checkpoint": str(path)}, net


@pytest.fixture(scope="module")
def base(session_home, tiny_base) -> dict:
    return {**tiny_base, "model": {"from_run": tiny_base["run_id"]}}


@pytest.fixture(scope="module")
def resnet_half(base) -> dict:
    return run_method(base["model"], "prune_structured", {"ratio": 0.5, "finetune_epochs": 1}, TIMED_WITH_ONNX)


# -- validation ------------------------------------------------------------------------------
@pytest.mark.fast
@pytest.mark.parametrize("name, params, field", [
    ("prune_unstructured", {"amount": 1.5}, "method.params.amount"),
    ("prune_unstructured", {"scope": "everywhere"}, "method.params.scope"),
    ("prune_structured", {"criterion": "entropy"}, "method.params.criterion"),
    ("prune_structured", {"ratio": 0.95}, "method.params.ratio"),
    ("soft_filter_pruning", {"ratio": 0}, "method.params.ratio"),
    ("soft_filter_pruning", {"zero": "gamma"}, "method.params.zero"),
    ("slimming", {"target_macs": 1.2}, "method.params.target_macs"),
    ("sensitivity", {"ratios": [0.5, 1.5]}, "method.params.ratios[1]"),
    ("sensitivity", {"ratios": []}, "method.params.ratios"),
    ("prune_structured", {"allocation": "sensitivity"}, "method.params.sensitivity_run"),
    ("prune_structured", {"sensitivity_run": "20261123-000000-abcdef"}, "method.params.sensitivity_run"),
    ("prune_structured", {"allocation": "sensitivity", "sensitivity_run": "../../etc"},
     "method.params.sensitivity_run"),
    ("prune_structured", {"allocation": "everywhere"}, "method.params.allocation"),
    ("prune_structured", {"target_macs": 0.5, "max_loss": 0.01}, "method.params.max_loss"),
    ("prune_structured", {"max_loss": 1.0}, "method.params.max_loss"),
    ("distill", {"teacher": "a/b"}, "method.params.teacher"),
])
def test_bad_params_are_refused_with_the_field_named(name, params, field):
    with pytest.raises(SpecError) as e:
        check_spec({"data": DATA, "model": {"from_run": "some-run"}, "method": {"name": name, "params": params}})
    assert e.value.field == field


# -- unstructured ------------------------------------------------------------------------------
def test_unstructured_sparsity_matches_request_and_bundle_shrinks(base):
    amount = 0.7
    r = run_method(base["model"], "prune_unstructured", {"amount": amount, "steps": 2, "finetune_epochs": 1})
    assert abs(r["sparsity"] - amount) <= 0.01 and abs(r["achieved_sparsity"] - amount) <= 0.01
    assert r["params"] == base["params"] and r["macs"] == base["macs"]      # same shape, zeros inside
    assert r["sparse_macs"] < (1 - amount + 0.05) * r["macs"]
    # packed storage: the surviving values plus a 1-bit mask per weight (1/32 of a float32)
    assert r["size_bytes"] < (1 - amount + 1 / 32 + 0.05) * base["size_bytes"]
    model, _ = export.load_model(r["checkpoint"])
    assert abs(measure.sparsity(model) - amount) <= 0.01


# -- structured ------------------------------------------------------------------------------
def test_structured_resnet18_half_removes_channels_and_exports(base, resnet_half):
    r = resnet_half
    before, after = convs(base["checkpoint"]), convs(r["checkpoint"])
    assert sum(m.out_channels for m in after.values()) < 0.6 * sum(m.out_channels for m in before.values())
    assert all(after[n].out_channels < before[n].out_channels for n in ("layer1.0.conv1", "layer4.1.conv2"))
    assert r["macs"] <= 0.6 * base["macs"] and r["params"] < base["params"]
    assert r["base_macs"] == base["macs"] and r["mac_reduction"] == pytest.approx(base["macs"] / r["macs"])
    assert r["pruned_channels"] == sum(before[n].out_channels - after[n].out_channels for n in before)
    model, _ = export.load_model(r["checkpoint"])
    assert model.fc.out_features == 10
    assert r["onnx_bytes"] and r["onnx_top1_agreement"] == 1.0


def test_structured_bundle_reloads_in_a_fresh_process(resnet_half):
    code = f"""
import dataclasses, json, torch
from engine import export, data, training
from engine.spec import DataSpec
torch.set_num_threads({torch.get_num_threads()})   # this process's: another sums convs in another order
raw = torch.load({resnet_half['checkpoint']!r}, map_location="cpu", weights_only=True)
model = export.model_from_bundle(raw)
d = data.load(DataSpec(**{json.dumps(DATA)}))
# normalised as the base was trained (the job does the same): this data's own mean/std shift a few answers
d = dataclasses.replace(d, mean=raw["meta"]["mean"], std=raw["meta"]["std"])
acc = training.evaluate(model, d, "test")["accuracy"]
print(json.dumps({{"acc": acc, "widths": [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]}}))
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={"PATH": "/usr/bin:/bin",   # the same thread count: another sums convs in another order
                            **{k: os.environ[k] for k in ("OMP_NUM_THREADS",) if k in os.environ}})
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["acc"] == pytest.approx(resnet_half["accuracy"], abs=1e-6)
    assert out["widths"] == [m.out_channels for m in convs(resnet_half["checkpoint"]).values()]


def test_structured_resnet18_records_its_paired_speedup_beside_the_mac_cut(base, resnet_half):
    """The cut's speed is recorded as one paired figure beside the MAC reduction it comes from. Whether it is
    faster is a benchmark's question (`python -m bench runtimes`: realised speed-up / MAC cut in each runtime,
    docs/BENCHMARKS.md), not a unit test's: at these tiny input sizes a call is mostly per-call overhead, and
    with another test worker on the other core a wall-clock assertion here failed on noise (2026-12-02)."""
    assert resnet_half["paired_speedup"] > 0 and "latency_speedup" not in resnet_half  # one figure, not two
    assert resnet_half["mac_reduction"] == pytest.approx(base["macs"] / resnet_half["macs"]) and \
        resnet_half["mac_reduction"] > 1.6


def test_structured_mobilenet_v2_keeps_depthwise_consistent(session_home, tmp_path):
    start, net = untrained_checkpoint("mobilenet_v2", tmp_path)
    r = run_method(start, "prune_structured", {"ratio": 0.5, "finetune_epochs": 0}, WITH_ONNX)
    assert r["macs"] <= 0.6 * measure.count_macs(net, (3, 8, 8))["macs"] and r["params"] < measure.count_params(net)
    after = convs(r["checkpoint"])
    depthwise = [m for m in after.values() if m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert after["features.2.conv.1.0"].out_channels < net.features[2].conv[1][0].out_channels
    assert r["onnx_top1_agreement"] == 1.0


def test_structured_mac_target_and_taylor(session_home, tmp_path):
    start, net = untrained_checkpoint("resnet18", tmp_path)
    r = run_method(start, "prune_structured", {"target_macs": 0.4, "criterion": "taylor", "grad_batches": 2,
                                               "steps": 2, "finetune_epochs": 0})
    assert abs(r["macs"] / r["base_macs"] / 0.4 - 1) <= 0.05
    assert r["base_macs"] == measure.count_macs(net, (3, 8, 8))["macs"]


def test_structured_refuses_unsupported_arch(session_home, tmp_path):
    start, _ = untrained_checkpoint("shufflenet_v2_x1_0", tmp_path)
    with pytest.raises(JobFailed, match="cannot prune shufflenet_v2_x1_0"):
        run_method(start, "prune_structured", {"ratio": 0.5, "finetune_epochs": 0})


# -- soft filter pruning, slimming, sensitivity ---------------------------------------------------
def test_soft_filter_pruning_removes_exactly_the_zeroed_filters(base):
    r = run_method(base["model"], "soft_filter_pruning", {"ratio": 0.3, "epochs": 1})
    assert r["removed_were_zero"] == 1.0 and r["zeroed_per_epoch"][0] > 0
    # He et al.'s schedule by default: the hard cut ends the soft epochs, nothing trains after it
    assert [p["phase"] for p in r["recipe"]["phases"]] == ["soft_prune"]
    assert r["pruned_channels"] > 0 and r["macs"] < 0.75 * base["macs"] and r["params"] < base["params"]
    before, after = convs(base["checkpoint"]), convs(r["checkpoint"])
    assert after["layer2.0.conv1"].out_channels < before["layer2.0.conv1"].out_channels


@pytest.mark.fast
def test_soft_zeroing_makes_the_hard_removal_exact():
    """After SFP's zeroing, physically removing the zeroed channels must not change the outputs,
    even with batch norms whose running statistics and shifts are far from zero."""
    from engine.methods.pruning import surgery
    from engine.methods.pruning.criterion import FilterNorm
    torch.manual_seed(0)
    net = models.build("resnet18", 10, small_input=True)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.bias.uniform_(-1, 1)
    net.eval()
    pruner = surgery.make_pruner(net, (3, 8, 8), FilterNorm(), 0.3)
    assert sum(surgery.zero_group(g) for g in surgery.selected_groups(pruner)) > 0
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        zeroed = net(x)
    pruner.reset()
    for g in surgery.selected_groups(pruner):
        assert bool(surgery.zero_channels(g).all())
        g.prune()
    assert measure.count_params(net) < measure.count_params(models.build("resnet18", 10, small_input=True))
    with torch.no_grad():
        assert torch.allclose(net(x), zeroed, atol=1e-4)


def test_slimming_meets_mac_target(base, monkeypatch):
    from engine import training
    kept = {}
    real_fit = training.fit

    def spy(*a, **kw):  # the sparsified weights must go on to the cut, not the most accurate epoch's
        kept[kw["phase"]] = kw.get("keep_best", True)
        return real_fit(*a, **kw)
    monkeypatch.setattr(training, "fit", spy)
    r = run_method(base["model"], "slimming", {"target_macs": 0.5, "epochs": 1, "finetune_epochs": 0})
    assert abs(r["macs"] / base["macs"] / 0.5 - 1) <= 0.05
    assert r["params"] < base["params"] and r["pruned_channels"] > 0
    assert kept["sparsify"] is False
    assert r["best_val_phase"] == "sparsify"  # no fine-tune after the cut: the record says what it describes


def test_slimming_expand_widens_back_to_base_budget(base):
    r = run_method(base["model"], "slimming", {"target_macs": 0.5, "epochs": 0, "finetune_epochs": 0,
                                                "expand": True})
    assert abs(r["macs"] / base["macs"] - 1) <= 0.05 and r["expand_factor"] > 1
    after = convs(r["checkpoint"])
    assert all(after[n].out_channels >= w for n, w in r["shrunk_widths"].items() if n in after)
    assert sum(after[n].out_channels for n in r["shrunk_widths"]) > sum(r["shrunk_widths"].values())


def test_sensitivity_records_curves_and_keeps_base(base):
    r = run_method(base["model"], "sensitivity", {"ratios": [0.5, 0.9], "max_layers": 2, "max_loss": 0.05})
    curves = r["sensitivity"]
    assert len(curves) == 2 and all(set(c) == {"0.5", "0.9"} for c in curves.values())
    assert all(0.0 <= a <= 1.0 for c in curves.values() for a in c.values())
    # removing 90 % of a layer's channels costs accuracy somewhere; the analysis saw it
    assert min(a for c in curves.values() for a in c.values()) < r["sensitivity_base_val_acc"]
    assert set(r["suggested_ratios"]) == set(curves)
    assert r["params"] == base["params"] and r["macs"] == base["macs"]
    # its probes show as they go (k of n, with an ETA), and each has a line in the job log
    probes = [e for e in Store().events(r["run_id"]) if e["phase"] == "sensitivity"]
    assert probes[-1]["step"] == probes[-1]["steps"] == 4 and probes[-1]["eta_s"] == 0
    assert all(e["eta_s"] >= 0 for e in probes if e["step"])
    log = (Store().run_dir(r["run_id"]) / "log").read_text()
    assert "sensitivity: 4 probes (2 layers x 2 ratios)" in log and log.count("sensitivity probe ") == 4


def kept_share(r: dict) -> dict[str, float]:
    return {n: after / before for n, (before, after) in r["layer_widths"].items()}


def test_global_allocation_cuts_where_the_weak_channels_are(tmp_path):
    """Three quarters of one layer's channels are made near-zero: one global ranking removes them all
    (a uniform cut would take 30 % of every layer)."""
    start, net = untrained_checkpoint("resnet18", tmp_path)
    weak, block = torch.arange(48), net.layer1[0]           # 48 of layer1.0.conv1's 64 channels
    with torch.no_grad():
        block.conv1.weight[weak] *= 1e-3
        block.bn1.weight[weak] *= 1e-3
        block.conv2.weight[:, weak] *= 1e-3
    export.save_bundle(export.make_bundle(net, arch="resnet18", num_classes=10, small_input=True, meta={}),
                       start["checkpoint"])
    r = run_method(start, "prune_structured", {"ratio": 0.3, "allocation": "global", "finetune_epochs": 0})
    shares = kept_share(r)
    assert r["allocation"] == "global" and r["channels_kept"] == pytest.approx(0.7, abs=0.05)
    assert shares["layer1.0.conv1"] <= 16 / 64                # every weak channel went (uniform: 30 % of each)
    assert min(shares.values()) >= 0.1 - 1 / 16               # and no layer beyond the 90 % cap


@pytest.mark.parametrize("criterion", ["l1", "bn_scale", "taylor"])
def test_global_allocation_meets_a_mac_target(base, criterion):
    """A global ranking's widths depend on the criterion: the search must rank as the pruning does
    (taylor's gradients must reach the pruned copies the search measures)."""
    r = run_method(base["model"], "prune_structured", {"target_macs": 0.5, "allocation": "global",
                                                       "criterion": criterion, "finetune_epochs": 0,
                                                       "grad_batches": 2})
    assert abs(r["macs"] / base["macs"] - 0.5) <= 0.05 * 0.5


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_max_loss_finds_the_largest_cut_within_the_accuracy_budget(base, allocation):
    """Every probe of the search is recorded: the chosen ratio's one-shot cut stayed within the
    budget, every larger probe lost more, and the model was cut at exactly that ratio."""
    r = run_method(base["model"], "prune_structured", {"max_loss": 0.05, "allocation": allocation,
                                                       "finetune_epochs": 0})
    ratio, base_acc, probes = r["channel_ratio"], r["budget_base_val_acc"], r["budget_probes"]
    assert 0 < ratio <= 0.9 and len(probes) <= 8
    assert [ratio, r["val_acc_before_finetune"]] in probes
    assert base_acc - r["val_acc_before_finetune"] <= 0.05
    assert all(base_acc - acc > 0.05 for x, acc in probes if x > ratio)
    assert r["macs"] < base["macs"]
    if allocation == "uniform":
        assert r["channels_kept"] == pytest.approx(1 - ratio, abs=0.05)


def test_max_loss_that_no_cut_can_meet_fails_with_the_field_named(base, monkeypatch):
    """Any removed channel costs all accuracy here: the search must refuse, not prune nothing."""
    from engine.context import Context
    monkeypatch.setattr(Context, "evaluate", lambda self, model, *a, **k: {
        "accuracy": float(sum(p.numel() for p in model.parameters()) == base["params"])})
    with pytest.raises(JobFailed, match="max_loss.*no uniform channel pruning removing a channel"):
        run_method(base["model"], "prune_structured", {"max_loss": 0.5, "finetune_epochs": 0})


@pytest.mark.parametrize("name, params", [("sensitivity", {"ratios": [0.5]}),
                                           ("prune_structured", {"max_loss": 0.02, "finetune_epochs": 0})])
def test_without_a_validation_split_accuracy_budgets_are_refused(base, name, params):
    """With val_fraction 0, "validation" is a slice of the training images, on which a cut looks
    cheaper than it is; the guard meant for this compared len(val) with 0 and never fired."""
    spec = {"data": {**DATA, "val_fraction": 0.0}, "model": base["model"], "method": {"name": name, "params": params},
            "train": {"epochs": 1}, "measure": QUICK}
    with pytest.raises(JobFailed, match=r"data.val_fraction: .*held-out validation"):
        run_spec(JobSpec.from_dict(spec), Store())
    d = D.load(JobSpec.from_dict(spec).data)
    assert not d.val_held_out and any("no validation split" in n for n in d.notes)


@pytest.mark.fast
def test_global_ranking_leaves_every_layer_its_floor(monkeypatch):
    """A layer whose filters all score low must keep 10 % of its channels (the documented cap):
    torch-pruning checks the cap only before a step, and one global step took this one from 64 to 2."""
    from engine.methods.pruning import criterion, surgery
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                      nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                      nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():  # 62 of the middle layer's 64 filters nearly dead
        m[3].weight[:62] *= 0.001
        m[4].weight[:62] *= 0.001
        m[6].weight[:, :62] *= 0.001
    monkeypatch.setattr(models, "classifier_layer", lambda model: ("11", model[11]))
    surgery.prune_step(surgery.make_pruner(m, (3, 16, 16), criterion.channel_importance("l1"), 0.5, 1, True, 0.9))
    assert m[3].out_channels == 7 and m[6].in_channels == 7  # ceil(64 * 0.1)
    norms = m[3].weight.detach().flatten(1).norm(dim=1).sort(descending=True).values
    assert norms[1] > 50 * norms[2]                           # the two live filters are among those kept
    assert m[0].out_channels < 32 and m[6].out_channels < 64  # the rest of the cut went elsewhere


def test_global_unstructured_allocation_does_not_depend_on_the_number_of_rounds():
    """Without training between rounds the weights do not change, so 1 or 5 rounds must cut the same
    weights; re-scaling each layer by a mean that counted earlier zeros gave [0.916, 0.884] vs [0.897, 0.903]."""
    import copy

    from torch.nn.utils import prune

    from engine.methods.pruning.criterion import weight_scales
    from engine.methods.pruning.schedule import cumulative_amounts
    from engine.methods.pruning.unstructured import apply_masks
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
    with torch.no_grad():
        net[0].weight.copy_(torch.randn(256, 256))
        net[1].weight.copy_(torch.distributions.Laplace(0, 1).sample((256, 256)))  # heavier tails
    masks = []
    for steps in (1, 5):
        layers = list(copy.deepcopy(net))
        scales = weight_scales([m.weight for m in layers], "l1")
        for amount in cumulative_amounts(0.9, steps):
            apply_masks(layers, amount, "global", scales)
        for m in layers:
            prune.remove(m, "weight")
        masks.append([m.weight == 0 for m in layers])
    assert all(torch.equal(a, b) for a, b in zip(*masks))
    assert abs(masks[0][0].float().mean() - masks[0][1].float().mean()) > 0.01  # layers do get different shares


def test_per_layer_ratios_skip_layers_left_whole_that_the_criterion_cannot_rank():
    """bn_scale ranks no channels of VGG's hidden Linear: a suggestion to keep it whole must not fail
    (it raised KeyError), and one to cut it is refused naming the criterion."""
    from engine.methods.pruning import surgery
    from engine.methods.pruning.criterion import channel_importance
    from engine.methods.pruning.structured import prune_to_ratios
    m = models.build("vgg11_bn", 10, small_input=True)
    shape = (3, 32, 32)
    initial = {g.root: len(g.scores) for g in surgery.score_groups(m, shape, channel_importance("l1"))}
    prune_to_ratios(m, shape, channel_importance("bn_scale"), {"features.0": 0.5, "classifier.0": 0.0}, initial, 1.0)
    assert m.features[0].out_channels == initial["features.0"] // 2
    with pytest.raises(SpecError) as e:
        prune_to_ratios(m, shape, channel_importance("bn_scale"), {"classifier.0": 0.5}, initial, 1.0)
    assert e.value.field == "method.params.criterion"


def test_largest_passing_returns_only_a_probe_that_passed():
    from engine.methods.pruning.schedule import largest_passing
    assert largest_passing(lambda x: x <= 0.3, 0.9, 7) == pytest.approx(0.3, abs=0.9 / 128)
    assert largest_passing(lambda x: x <= 0.3, 0.9, 7) <= 0.3
    assert largest_passing(lambda x: True, 0.9, 7) == 0.9          # the largest cut passes: no bisection
    assert largest_passing(lambda x: False, 0.9, 7) == 0.0


@pytest.fixture(scope="module")
def mixed_sensitivity(base) -> tuple[dict, dict[str, float]]:
    """A real sensitivity run whose suggestions are then set to different ratios per layer (one
    layer judged too sensitive), to prove each layer gets its own."""
    sens = run_method(base["model"], "sensitivity", {"ratios": [0.25, 0.5, 0.75], "max_layers": 4, "max_loss": 1.0})
    assert set(sens["suggested_ratios"].values()) == {0.75}      # any loss tolerated: the largest ratio
    mixed = dict(zip(sorted(sens["suggested_ratios"]), [0.25, 0.5, 0.75, 0.0]))
    store = Store()
    store.update(sens["run_id"], record={**store.get(sens["run_id"])["record"], "suggested_ratios": mixed})
    return sens, mixed


def test_sensitivity_allocation_removes_each_layers_suggested_share(base, mixed_sensitivity):
    sens, mixed = mixed_sensitivity
    r = run_method({"from_run": sens["run_id"]}, "prune_structured",
                   {"allocation": "sensitivity", "sensitivity_run": sens["run_id"], "steps": 2, "finetune_epochs": 0})
    widths = r["layer_widths"]
    for name, ratio in mixed.items():
        before, after = widths[name]
        assert after == before - int(ratio * before), name
    # the first conv of each residual block has a channel group of its own, not among the listed ones
    untouched = [n for n in widths if n.endswith(".conv1") and n.startswith("layer") and n not in mixed]
    assert len(untouched) == 8 and all(widths[n][0] == widths[n][1] for n in untouched)
    assert r["sensitivity_run"] == sens["run_id"] and r["macs"] < base["macs"]


def test_sensitivity_allocation_scales_the_suggestions_to_a_mac_target(base, mixed_sensitivity):
    sens, mixed = mixed_sensitivity
    r = run_method({"from_run": sens["run_id"]}, "prune_structured",
                   {"allocation": "sensitivity", "sensitivity_run": sens["run_id"], "target_macs": 0.7,
                    "finetune_epochs": 0})
    assert abs(r["macs"] / base["macs"] - 0.7) <= 0.05 * 0.7
    s = r["sensitivity_scale"]
    for name, ratio in mixed.items():                          # one factor for all, the cap aside
        assert r["layer_ratios"][name] == pytest.approx(min(s * ratio, 0.9))
        before, after = r["layer_widths"][name]
        assert after == before - int(min(s * ratio, 0.9) * before + 1e-9), name


def test_sensitivity_allocation_scales_the_suggestions_within_an_accuracy_budget(base, mixed_sensitivity):
    sens, mixed = mixed_sensitivity
    r = run_method({"from_run": sens["run_id"]}, "prune_structured",
                   {"allocation": "sensitivity", "sensitivity_run": sens["run_id"], "max_loss": 0.05,
                    "finetune_epochs": 0})
    s, base_acc = r["sensitivity_scale"], r["budget_base_val_acc"]
    assert [s, r["val_acc_before_finetune"]] in r["budget_probes"]
    assert base_acc - r["val_acc_before_finetune"] <= 0.05
    assert all(base_acc - acc > 0.05 for x, acc in r["budget_probes"] if x > s)
    assert r["layer_ratios"] == {n: pytest.approx(min(s * ratio, 0.9)) for n, ratio in mixed.items()}


def test_sensitivity_allocation_refuses_a_run_that_is_not_an_analysis(base):
    with pytest.raises(JobFailed, match="not a sensitivity analysis"):
        run_method(base["model"], "prune_structured",
                   {"allocation": "sensitivity", "sensitivity_run": base["run_id"], "finetune_epochs": 0})


def test_budget_searches_find_the_closest_point_with_few_probes():
    from engine.methods.pruning.schedule import bisect_decreasing, nearest_index
    probes = []

    def macs_left(ratio):                    # falls like a pruned net's MACs: (1 - r)^2
        probes.append(ratio)
        return (1 - ratio) ** 2

    x, fx = bisect_decreasing(macs_left, 0.0, 0.95, 0.5)
    assert x == pytest.approx(1 - 0.5 ** 0.5, abs=0.01) and fx == pytest.approx(0.5, rel=0.02)
    assert len(set(probes)) == len(probes) <= 13          # cached: each point costs one probe
    steps = [100, 90, 70, 40, 20, 5, 0]
    k, v = nearest_index(lambda i: steps[i], len(steps) - 1, 33)
    assert (k, v) == (3, 40)
    assert nearest_index(lambda i: steps[i], len(steps) - 1, 1000) == (0, 100)
