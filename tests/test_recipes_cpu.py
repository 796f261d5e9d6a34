"""``python -m bench recipes-cpu``: its recipes validate and reach the issue's compression, each row is
judged against its target and its control honestly, and the published point it cites exists."""
from __future__ import annotations

import pytest

from bench import recipes_cpu as rc
from engine import export, literature, methods, models, presets

pytestmark = pytest.mark.fast

BASE = {"run_id": "b", "accuracy": 0.90, "macs": 1000, "size_bytes": 4000}


def test_every_recipe_is_a_valid_spec_on_the_tour_data(tmp_path):
    net, path = models.build(presets.QUICK_ARCH, 10, small_input=True), tmp_path / "start.pt"
    export.save_bundle(export.make_bundle(net, arch=presets.QUICK_ARCH, num_classes=10, small_input=True, meta={}),
                       path)
    for r in rc.recipes(2, 3):
        spec = rc.spec(r.label, dict(presets.QUICK_DATA), {"checkpoint": str(path)}, r.method, r.params)
        assert spec.method.name == r.method and spec.train.device == "cpu"


def test_trp_truncates_as_often_per_epoch_as_the_tour_whatever_the_image_count():
    default = next(p.default for p in methods.get("lowrank_svd").params if p.name == "trp_interval")
    assert rc.trp_interval(None) == default          # the tour's own data: the method's default
    assert rc.trp_interval(10000) == 7 and rc.trp_interval(100) == 1
    lowrank = next(r for r in rc.recipes(3, 3, 10000) if r.key == "lowrank")
    assert lowrank.params["trp_interval"] == 7 and lowrank.params["reg_epochs"] == 2


def test_each_cited_published_point_exists_and_names_its_source():
    cited = [r for r in rc.recipes(1, 1) if r.literature]
    assert {r.key for r in cited} >= {"structured", "sfp", "lowrank", "kd", "int8"}
    for r in cited:
        pts = [p for p in literature.points() if (p.method, p.net) == r.literature]
        assert pts, r.literature
        text = rc.published(r, 2.1)
        assert any(p.source in text for p in pts)
    sfp = next(r for r in cited if r.key == "sfp")
    # the nearest MAC reduction is drawn: SFP ResNet-56 at 2.11x, not another of its rows
    assert "2.11x" in rc.published(sfp, 2.1)


def test_sfp_row_is_he_et_al_schedule_and_gradual_unstructured_gets_its_longer_ramp():
    sfp_default = {p.name: p.default for p in methods.get("soft_filter_pruning").params}
    for epochs in (2, 3):
        r = {x.key: x for x in rc.recipes(epochs, 3)}
        # every SFP epoch soft-prunes and the hard cut ends it (He et al.; the method's own default): no fine-tune
        assert r["sfp"].params["finetune_epochs"] == sfp_default["finetune_epochs"] == 0
        assert r["sfp"].params["epochs"] > r["structured"].params["finetune_epochs"]
        assert r["unstructured"].params["finetune_epochs"] == rc.UNSTRUCTURED_EPOCHS * epochs > epochs
        assert f"over {rc.UNSTRUCTURED_EPOCHS * epochs} epochs" in r["unstructured"].label


def test_rows_whose_target_is_on_another_net_also_show_the_published_points_on_ours():
    recipes = {r.key: r for r in rc.recipes(1, 1)}
    for key in ("sfp", "unstructured"):
        r = recipes[key]
        own = rc.same_net_points(r, presets.QUICK_ARCH, 2.1)
        assert own and all(p.net == presets.QUICK_ARCH and p.dataset == "cifar10" for p in own), key
        text = rc.published(r, 2.1, presets.QUICK_ARCH)
        assert f"on our net ({presets.QUICK_ARCH})" in text and all(p.source in text for p in own)
        assert text.startswith(rc.published(r, 2.1))        # the target's point (or anchor) stays first
    # SFP: the ResNet-20 row nearest our MAC reduction (ShrinkBench's 42.2 % fewer FLOPs, 1.73x, at 2.1x)
    sfp_own = rc.same_net_points(recipes["sfp"], presets.QUICK_ARCH, 2.1)
    rows = [p for p in literature.matching(presets.QUICK_ARCH, "cifar10") if p.method == "SFP"]
    assert sfp_own == [max(rows, key=lambda p: p.mac_reduction)]
    # where the run's net is the target's own, nothing is drawn twice; a net without points adds nothing
    assert rc.same_net_points(recipes["sfp"], "resnet56", 2.1) == []
    assert rc.published(recipes["sfp"], 2.1, "mobilenet_v2_cifar") == rc.published(recipes["sfp"], 2.1)


@pytest.mark.parametrize("ci, verdict", [([0.2, 1.5], "**beats control**"), ([-0.4, 0.9], "does not (tie within CI)"),
                                         ([-2.0, -0.3], "does not (control better)")])
def test_a_row_beats_its_control_only_when_the_paired_interval_is_above_zero(ci, verdict):
    assert rc.control_verdict({"control_delta_ci95_pt": ci}) == verdict
    assert rc.control_verdict(None) == "–"


def test_targets_say_met_or_by_how_much_they_were_missed():
    recipes = {r.key: r for r in rc.recipes(1, 1)}
    struct = recipes["structured"]
    assert rc.judge(struct, {"accuracy": 0.899, "macs": 476, "size_bytes": 2000}, BASE, None) == "met"
    missed = rc.judge(struct, {"accuracy": 0.89, "macs": 476, "size_bytes": 2000}, BASE, None)
    assert missed == "missed: Δ missed by 0.70 pt"
    assert "1.25x < 2x fewer MACs" in rc.judge(struct, {"accuracy": 0.9, "macs": 800, "size_bytes": 2000}, BASE, None)
    assert rc.judge(recipes["int8"], {"accuracy": 0.904, "macs": 1000, "size_bytes": 1000}, BASE, None).startswith(
        "missed: Δ outside ±0.3 pt by 0.10")
    assert rc.judge(recipes["kd"], {"accuracy": 0.8, "macs": 250, "size_bytes": 1000}, BASE, 0.7) == "met"
    assert "missed by 0.30 pt" in rc.judge(recipes["kd"], {"accuracy": 0.8, "macs": 250, "size_bytes": 1000}, BASE, 0.2)
    small = recipes["small5x"]
    assert "4.00x < 5x smaller" in rc.judge(small, {"accuracy": 0.9, "macs": 476, "size_bytes": 1000}, BASE, None)


def test_section_marks_the_setting_the_controls_and_a_failed_row(tmp_path):
    def row(acc, macs, size, ci):
        return {"id": f"r{acc}", "record": {"accuracy": acc, "macs": macs, "size_bytes": size,
                                            "delta_accuracy_ci95": ci}}
    res = {"base": BASE, "wall_s": 12.0, "failed": {"lowrank": "method.params.rank_ratio: refused"},
           "settings": {"base_epochs": 6, "epochs": 2, "student_epochs": 3, "data": dict(presets.QUICK_DATA)},
           "rows": {"structured": row(0.897, 476, 2000, [-0.006, 0.0]), "sfp": row(0.88, 470, 2000, [-0.03, -0.01])},
           "controls": {"structured": {"control_arch": "resnet20", "control_width": 0.68, "control_macs_ratio": 1.01,
                                       "control_epochs": 8, "accuracy": 0.88, "control_delta_pt": 1.7,
                                       "control_delta_ci95_pt": [1.1, 2.3]},
                        "sfp": {"control_arch": "resnet20", "control_width": 0.68, "control_macs_ratio": 0.99,
                                "control_epochs": 9, "accuracy": 0.885, "control_delta_pt": -0.5,
                                "control_delta_ci95_pt": [-1.2, 0.2]}}}
    text = rc.section(res, store=None)
    assert "Not the papers' setting" in text and "no speed claims" in text
    lines = {ln.split(" | ")[0].strip("| "): ln for ln in text.splitlines() if ln.startswith("| ")}
    assert "**beats control**" in lines[rc.recipes(2, 3)[0].label] and "| met |" in lines[rc.recipes(2, 3)[0].label]
    assert "tie within CI" in lines[rc.recipes(2, 3)[1].label]
    assert "failed: method.params.rank_ratio" in text
    assert "Every structured row beats its control: **missed** (1 of 2" in text
    # beside each control verdict and the target line: the published pruned − scratch figure (Liu et al. 2019)
    pair = literature.scratch_counterpart("prune_structured", 1000 / 476)
    assert f"pruned − scratch {pair.gap_pt('Scratch-E'):+.2f}" in lines[rc.recipes(2, 3)[0].label]
    assert "another method" in lines[rc.recipes(2, 3)[1].label]
    target = next(ln for ln in text.splitlines() if ln.startswith("- Published counterpart (Liu et al. 2019"))
    assert "0 of 2 verified structured pairs beat even Scratch-E" in target and pair.fine_tuned.source in target
    # the table keeps its columns: no stray pipe inside a cell
    widths = {ln.count(" | ") for ln in lines.values()}
    assert len(widths) == 1



def test_every_row_that_fine_tunes_after_a_cut_names_the_base_training_rate():
    """Named, not left to the default: a run made when the default was a tenth must not be reused by
    --resume as this row."""
    base = {"recipe": {"phases": [{"phase": "train", "epochs": 6, "lr": 0.025}]}}
    assert rc.rewind_lr(base) == 0.025 and rc.rewind_lr({}) is None
    rows = {r.key: r for r in rc.recipes(3, 3, None, rc.rewind_lr(base))}
    takes = [k for k, r in rows.items() if any(p.name == "finetune_lr" for p in methods.get(r.method).params)]
    assert set(takes) == {"structured", "sfp", "unstructured", "lowrank"}
    assert all(rows[k].params["finetune_lr"] == 0.025 for k in takes)
    assert rows["small5x"].params["steps"][0]["params"]["finetune_lr"] == 0.025
