"""prune_structured's recipe on tiny data: aligned widths, sparse learning that sparsifies, a recovery
fine-tune distilled from the uncompressed start; and presets that bring their controls."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from engine import export, models, presets
from engine.methods import recovery
from engine.methods.control import controllable
from engine.methods.pruning import surgery
from engine.methods.pruning.criterion import channel_importance
from engine.runner import run_spec
from engine.spec import JobSpec, SpecError
from engine.store import Store
from engine.validation import check_spec

DATA = {"name": "digits", "limit": 400, "test_limit": 200}
QUICK = {"onnx": False, "latency_runs": 2, "warmup_runs": 1, "batch_size": 2, "paired_rounds": 0}


def start(arch: str, tmp_path) -> tuple[dict, nn.Module]:
    """An untrained bundle to start from: surgery and the teacher need no trained weights."""
    torch.manual_seed(0)
    net = models.build(arch, 10, small_input=True)
    path = tmp_path / f"{arch}.pt"
    export.save_bundle(export.make_bundle(net, arch=arch, num_classes=10, small_input=True, meta={}), path)
    return {"checkpoint": str(path)}, net


def prune(model: dict, data: dict = DATA, **params) -> dict:
    spec = {"data": data, "model": model, "method": {"name": "prune_structured", "params": params},
            "train": {"epochs": 1}, "measure": QUICK}
    return run_spec(JobSpec.from_dict(spec), Store())


def widths(record: dict) -> dict[str, int]:
    return surgery.widths(export.load_model(record["checkpoint"])[0])


@pytest.mark.fast
@pytest.mark.parametrize("params, field", [
    ({"round_to": 1}, "method.params.round_to"),
    ({"sparse_learning": "l0"}, "method.params.sparse_learning"),
    ({"sparse_reg": 0}, "method.params.sparse_reg"),
    ({"finetune_kd": 1.5}, "method.params.finetune_kd"),
    ({"finetune_lr": 0}, "method.params.finetune_lr"),
    ({"criterion": "lamp2"}, "method.params.criterion"),
])
def test_bad_recipe_params_are_refused_with_the_field_named(params, field):
    with pytest.raises(SpecError) as e:
        check_spec({"data": DATA, "model": {"from_run": "some-run"},
                    "method": {"name": "prune_structured", "params": params}})
    assert e.value.field == field


@pytest.mark.fast
def test_aligned_keep_rounds_up_and_never_past_the_width():
    assert [surgery.aligned_keep(k, 64, 8) for k in (1, 8, 9, 44, 64)] == [8, 8, 16, 48, 64]
    assert surgery.aligned_keep(8, 12, 16) == 12      # a layer narrower than round_to stays whole


@pytest.mark.fast
@pytest.mark.parametrize("arch, criterion, global_ranking", [
    ("resnet18", "l1", False),          # 64 x 0.7 = 44.8 channels kept -> 48
    ("resnet20", "lamp", True),
    ("mobilenet_v2", "l2", False),      # depthwise groups: in = out = groups stays consistent
])
def test_round_to_leaves_every_pruned_width_a_multiple_of_8(arch, criterion, global_ranking):
    def cut(round_to):
        torch.manual_seed(0)
        net = models.build(arch, 10, small_input=True)
        before = surgery.widths(net)
        surgery.prune_step(surgery.make_pruner(net, (3, 8, 8), channel_importance(criterion), 0.3,
                                               global_ranking=global_ranking, max_ratio=0.9, round_to=round_to))
        net(torch.zeros(1, 3, 8, 8))                                  # still a consistent network
        return before, surgery.widths(net)

    before, plain = cut(None)
    assert any(w % 8 for w in plain.values())                       # without it the widths are unaligned
    _, aligned = cut(8)
    assert all(w % 8 == 0 for n, w in aligned.items() if before[n] % 8 == 0), aligned
    assert sum(aligned.values()) < 0.85 * sum(before.values())      # it still cut


def test_round_to_reaches_the_saved_model_through_prune_structured(tmp_path):
    model, net = start("resnet20", tmp_path)
    r = prune(model, ratio=0.4, allocation="global", criterion="lamp", steps=2, round_to=16, finetune_epochs=0)
    after = widths(r)
    assert all(w % 16 == 0 for w in after.values()), after
    assert r["macs"] < 0.8 * r["base_macs"] and r["round_to"] == 16 and r["steps"] == 2


@pytest.mark.parametrize("mode", ["group_norm", "growing_reg"])
def test_sparse_learning_shrinks_the_channels_the_cut_removes(tmp_path, mode):
    """A strong regulariser for one epoch: the weakest half of each group carries less of its norm."""
    model, _ = start("resnet20", tmp_path)
    # GReg's penalty grows every 10 steps: batches of 16 give 25 steps, two increments
    r = prune(model, ratio=0.5, sparse_learning=mode, sparse_reg=0.5, finetune_lr=0.1, finetune_epochs=0,
              data={**DATA, "batch_size": 16})
    assert r["sparse_learning"] == mode
    assert r["weak_channel_norm_share_after"] < 0.8 * r["weak_channel_norm_share_before"], r
    assert "sparse learning" in [h["phase"] for h in r["history"]]


def test_kd_assisted_finetune_learns_from_the_uncompressed_start(tmp_path, monkeypatch):
    model, net = start("resnet20", tmp_path)
    teachers, calls = [], []
    load = recovery.load_teacher

    def spy_load(ctx, run_id):
        teachers.append(load(ctx, run_id))
        return teachers[-1]

    def spy_kd(s, t, y, T, alpha, smoothing):
        calls.append((T, alpha))
        return kd(s, t, y, T, alpha, smoothing)

    kd = recovery.kd_loss
    monkeypatch.setattr(recovery, "load_teacher", spy_load)
    monkeypatch.setattr(recovery, "kd_loss", spy_kd)
    r = prune(model, ratio=0.5, steps=2, finetune_kd=0.9, finetune_T=3.0)
    assert len(teachers) == 1 and calls and set(calls) == {(3.0, 0.9)}   # one teacher for both rounds
    teacher = teachers[0]
    assert all(not p.requires_grad for p in teacher.parameters())
    # the teacher is the start as it was before any cut: same widths, same weights
    start_state, t_state = net.state_dict(), teacher.state_dict()
    assert start_state.keys() == t_state.keys()
    assert all(torch.equal(start_state[k], t_state[k].cpu()) for k in start_state)
    assert surgery.widths(teacher) != widths(r)
    assert r["finetune_kd"] == 0.9 and r["finetune_teacher"] == "the starting model"


@pytest.mark.fast
def test_thorough_and_gpu_presets_bring_a_control_for_each_controllable_job():
    for build in (presets.cpu_thorough, lambda: presets.cifar10_resnet18_gpu("/data/cifar10.zip")):
        plan = build()
        label = plan[0]["name"].split(": ")[0]
        controlled = [i for i, s in enumerate(plan) if controllable(s["method"])]
        controls = [s for s in plan if s["method"]["name"] == "control"]
        assert controlled and [c["method"]["params"]["of_run"] for c in controls] == [presets.ref(i)
                                                                                      for i in controlled]
        assert all(c["name"] == f"{label}: control of {plan[i]['method']['name']}"
                   for c, i in zip(controls, controlled))
    ok, problems = presets.check(presets.cpu_thorough())      # (the GPU plan's data path is not here)
    assert not problems and sum(s["method"]["name"] == "control" for s in ok) >= 6
    assert not any(s["method"]["name"] == "control" for s in presets.quick_tour())   # its 600 s budget
