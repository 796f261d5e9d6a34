"""prune_blocks removes whole residual blocks: the saved net is genuinely shallower (fewer modules,
fewer MACs, reloads and exports), keeps its input/output shapes, refuses nets with nothing to remove,
meets a MAC target with whole blocks, and removes the block whose loss costs least first."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from engine import export, measure, models
from engine.methods.pruning import blocks
from engine.runner import JobFailed, run_spec
from engine.spec import JobSpec, SpecError
from engine.store import Store
from engine.validation import check_spec

DATA = {"name": "digits", "limit": 400, "test_limit": 200}
QUICK = {"onnx": False, "deploy": False, "latency_runs": 3, "warmup_runs": 1}
SHAPE = (3, 8, 8)


def run_method(model: dict, params: dict) -> dict:
    spec = {"data": DATA, "model": model, "method": {"name": "prune_blocks", "params": params},
            "train": {"epochs": 1}, "measure": QUICK}
    return run_spec(JobSpec.from_dict(spec), Store())


def checkpoint(net: nn.Module, arch: str, path) -> dict:
    export.save_bundle(export.make_bundle(net, arch=arch, num_classes=10, small_input=True, meta={}), path)
    return {"checkpoint": str(path)}


def block_names(net: nn.Module) -> list[str]:
    return [n for n, m in net.named_modules() if isinstance(m, blocks.BLOCK_TYPES)]


@pytest.mark.fast
@pytest.mark.parametrize("arch", ["resnet20", "resnet50"])   # CIFAR BasicBlock, torchvision Bottleneck
def test_removed_blocks_are_gone_and_the_net_reloads_and_exports(arch, tmp_path):
    net = models.build(arch, 10, small_input=True).eval()
    names = blocks.removable(net, SHAPE)
    assert names and all(getattr(net.get_submodule(n), "downsample") is None for n in names)
    drop = names[:2]
    cut = blocks.without(net, drop).eval()
    assert len(block_names(cut)) == len(block_names(net)) - len(drop)
    assert len(list(cut.modules())) < len(list(net.modules()))
    assert measure.count_macs(cut, SHAPE)["macs"] < measure.count_macs(net, SHAPE)["macs"]
    assert measure.count_params(cut) < measure.count_params(net)
    assert len(block_names(net)) == len(block_names(models.build(arch, 10, small_input=True)))  # base untouched
    x = torch.randn(3, *SHAPE)
    assert cut(x).shape == net(x).shape
    path = tmp_path / "cut.pt"
    checkpoint(cut, arch, path)
    loaded, _ = export.load_model(str(path))
    loaded.eval()
    assert len(block_names(loaded)) == len(block_names(cut))
    torch.testing.assert_close(loaded(x), cut(x))
    export.export_onnx(cut, SHAPE, tmp_path / "cut.onnx")
    sess = export.onnx_session(tmp_path / "cut.onnx")
    out = sess.run(None, {"input": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), cut(x).detach(), atol=1e-4, rtol=1e-4)


@pytest.mark.fast
def test_uniform_order_gives_the_shallower_resnets_layout():
    """ResNet-20 less 3 (6) blocks, uniformly, has exactly ResNet-14's (ResNet-8's) MACs and parameters."""
    net = models.build("resnet20", 10, small_input=True)
    order = blocks.uniform_order(net, blocks.removable(net, SHAPE))
    for k, arch in ((3, "resnet14"), (6, "resnet8")):
        cut, ref = blocks.without(net, order[:k]), models.build(arch, 10, small_input=True)
        assert measure.count_macs(cut, SHAPE)["macs"] == measure.count_macs(ref, SHAPE)["macs"]
        assert measure.count_params(cut) == measure.count_params(ref)


@pytest.mark.fast
def test_greedy_probes_again_after_each_removal_and_breaks_ties_in_network_order():
    names = ["a", "b", "c", "d"]
    # accuracy without a set of blocks: "c" costs nothing alone, but once it is gone "d" is the cheapest
    cost = {"a": 0.05, "b": 0.02, "c": 0.0, "d": 0.03}
    seen = []

    def probe(removed, candidate):
        seen.append((tuple(removed), candidate))
        gone = [*removed, candidate]
        return 1.0 - sum(cost[n] for n in gone) - (0.5 if gone == ["c", "b"] else 0.0)

    removed, steps = blocks.removal_order(nn.Module(), names, "greedy", probe, lambda r: len(r) >= 2)
    assert removed == ["c", "d"]
    assert [s["removed"] for s in steps] == removed and set(steps[1]["val_accuracy"]) == {"a", "b", "d"}
    assert len(seen) == 4 + 3
    tied, _ = blocks.removal_order(nn.Module(), names, "greedy", lambda r, c: 0.5, lambda r: len(r) >= 1)
    assert tied == ["a"]
    once, steps = blocks.removal_order(nn.Module(), names, "oneshot", probe, lambda r: len(r) >= 2)
    assert once == ["c", "b"] and len(steps) == 1   # ranked once: the pair's interaction is not seen


@pytest.mark.fast
def test_nearest_count_is_the_whole_block_count_nearest_the_target():
    shares = [0.9, 0.8, 0.7, 0.6]
    assert blocks.nearest_count(shares, 0.76) == 2
    assert blocks.nearest_count(shares, 0.74) == 3
    assert blocks.nearest_count(shares, 0.1) == len(shares)
    assert blocks.nearest_count(shares, 0.99) == 1


@pytest.mark.fast
@pytest.mark.parametrize("arch", ["vgg16_bn_cifar", "mobilenet_v2_cifar"])
def test_a_named_arch_without_residual_blocks_is_refused_when_queued(arch):
    with pytest.raises(SpecError) as e:
        check_spec({"data": DATA, "model": {"arch": arch}, "method": {"name": "prune_blocks"}})
    assert e.value.field == "model.arch" and "identity shortcut" in str(e.value)


def test_a_checkpoint_without_removable_blocks_fails_before_any_fine_tune(session_home, tmp_path):
    start = checkpoint(models.build("mobilenet_v2_cifar", 10, small_input=True), "mobilenet_v2_cifar", tmp_path / "m.pt")
    with pytest.raises(JobFailed, match="identity shortcut"):
        run_method(start, {"blocks": 1, "finetune_epochs": 1})
    start = checkpoint(models.build("resnet20", 10, small_input=True), "resnet20", tmp_path / "r.pt")
    with pytest.raises(JobFailed, match="7 removable blocks"):
        run_method(start, {"blocks": 8, "criterion": "uniform", "finetune_epochs": 1})


def test_target_macs_removes_the_count_of_blocks_nearest_it(session_home, tmp_path):
    net = models.build("resnet20", 10, small_input=True)
    base = measure.count_macs(net, SHAPE)["macs"]
    order = blocks.uniform_order(net, blocks.removable(net, SHAPE))
    share = [measure.count_macs(blocks.without(net, order[:k]), SHAPE)["macs"] / base for k in range(1, 8)]
    target = share[3] + 0.3 * (share[2] - share[3])   # nearer 4 blocks removed than 3 or 5
    r = run_method(checkpoint(net, "resnet20", tmp_path / "r.pt"),
                   {"target_macs": target, "criterion": "uniform", "finetune_epochs": 0})
    assert r["removed_blocks"] == order[:4]
    assert r["macs_kept"] == pytest.approx(share[3]) and r["macs"] / r["base_macs"] == pytest.approx(share[3])
    cut, _ = export.load_model(r["checkpoint"])
    assert len(block_names(cut)) == len(block_names(net)) - 4


def test_greedy_keeps_the_block_that_matters_though_ties_go_to_it(session_home, tiny_base, tmp_path):
    """The trained digits ResNet-18 with every removable block but the first made the identity (its residual
    branch's last batch norm zeroed): removing any of those leaves the same function, so their probes agree
    exactly; the first block is the only one that matters, and greedy leaves it though it comes first in
    network order (where ties go). The record keeps every probe."""
    net, _ = export.load_model(tiny_base["checkpoint"])
    names = blocks.removable(net, SHAPE)
    keep, idle = names[0], names[1:]
    with torch.no_grad():
        for n in idle:
            net.get_submodule(n).bn2.weight.zero_()
            net.get_submodule(n).bn2.bias.zero_()
    r = run_method(checkpoint(net, "resnet18", tmp_path / "idle.pt"),
                   {"blocks": 2, "criterion": "greedy", "probe_images": 100, "finetune_epochs": 0})
    first = r["block_probes"][0]["val_accuracy"]
    assert set(first) == set(names) and len(r["block_probes"]) == 2
    assert len({first[n] for n in idle}) == 1                 # the same function, the same accuracy
    assert first[keep] < first[idle[0]]                        # the block that matters costs accuracy
    assert r["removed_blocks"] == idle[:2]                     # the idle ones, in network order on the tie
    assert set(r["block_probes"][1]["val_accuracy"]) == set(names) - {idle[0]}
    assert r["residual_blocks"] == [len(block_names(net)), len(block_names(net)) - 2]


@pytest.mark.fast
def test_a_block_pruned_resnet20_is_controlled_by_the_resnet_of_its_own_depth():
    from engine.methods import control
    net = models.build("resnet20", 10, small_input=True)
    order = blocks.uniform_order(net, blocks.removable(net, SHAPE))
    for k, arch in ((3, "resnet14"), (6, "resnet8")):
        cut = blocks.without(net, order[:k])
        depth = control.cifar_resnet_depth(cut)
        assert f"resnet{depth}" == arch
        target = measure.count_macs(cut, SHAPE)["macs"]
        c_arch, width, macs = control.match_macs("resnet20", target, 10, True, SHAPE, depth)
        assert (c_arch, macs) == (arch, target) and width == pytest.approx(1.0, abs=0.01)
    assert control.candidates("resnet20", control.cifar_resnet_depth(net))[0] == "resnet20"  # uncut: its own
