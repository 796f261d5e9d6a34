"""The shipped table of published results: it loads, every point cites its source, and it covers the
methods and nets the recipes are compared with."""
import pytest

from engine import literature

pytestmark = pytest.mark.fast


def test_every_point_cites_a_source_and_is_a_possible_result():
    pts = literature.points()
    assert len(pts) >= 15
    for p in pts:
        assert p.source.strip() and p.confidence.strip()
        assert 0 < p.base_acc <= 100 and 0 < p.result_acc <= 100 and p.mac_reduction >= 1
        assert p.delta_pt == pytest.approx(p.result_acc - p.base_acc, abs=0.01)


def test_the_table_covers_the_literature_the_issue_names():
    methods = " ".join(p.method for p in literature.points())
    for name in ("DepGraph", "ResRep", "HRank", "SFP", "FPGM", "TRP", "Hinton KD", "INT8 PTQ", "control"):
        assert name in methods, name
    nets = {p.net for p in literature.points() if p.dataset == "cifar10"}
    assert {"resnet20", "resnet56", "resnet18", "vgg16_bn_cifar", "mobilenet_v2_cifar"} <= nets


def test_points_use_registry_names_so_runs_can_match_them():
    from engine import models
    cifar_nets = {p.net for p in literature.points() if p.dataset == "cifar10"}
    assert cifar_nets <= set(models.ARCHS)


def test_matching_and_base_gap():
    r56 = literature.matching("resnet56", "cifar10")
    assert r56 and all(p.net == "resnet56" for p in r56)
    best = max(p.base_acc for p in r56)
    assert literature.base_gap_pt(0.90, "resnet56", "cifar10") == pytest.approx(best - 90.0)
    assert literature.base_gap_pt(0.90, "resnet56", "fashion-mnist") is None


def _refused(tmp_path, monkeypatch, row: str, match: str) -> None:
    """A table of the real header and ``row`` is refused on load with ``match``."""
    bad = tmp_path / "literature.csv"
    bad.write_text(literature.TABLE.read_text().splitlines()[0] + "\n" + row + "\n")
    monkeypatch.setattr(literature, "TABLE", bad)
    literature.points.cache_clear()
    try:
        with pytest.raises(ValueError, match=match):
            literature.points()
    finally:
        literature.points.cache_clear()


def test_a_row_without_a_source_is_refused(tmp_path, monkeypatch):
    _refused(tmp_path, monkeypatch, "X,pruning,resnet20,cifar10,92,91,2,s,,read", "cite its source")


def test_pruned_vs_scratch_rows_pair_up_and_cite_their_source():
    pairs = {q.stem: q for q in literature.scratch_pairs()}
    b = pairs["Liu et al. 2019: L1-norm filter pruning ResNet-34-B"]
    assert b.fine_tuned.family == "pruning" and {p.family for p in b.scratch.values()} == {"scratch"}
    assert set(b.scratch) == {"Scratch-E", "Scratch-B"} and "rethinking-network-pruning" in b.fine_tuned.source
    assert b.gap_pt("Scratch-E") == pytest.approx(b.fine_tuned.result_acc - b.scratch["Scratch-E"].result_acc)
    for q in pairs.values():
        assert all(p.source == q.fine_tuned.source and p.net == q.fine_tuned.net for p in q.scratch.values())
    # our uniform L1 cut meets the nearest L1-norm pair by MAC reduction; a method without a counterpart gets none
    assert literature.scratch_counterpart("prune_structured", 2.1) == b
    assert literature.scratch_counterpart("prune_structured", 1.1).stem.endswith("ResNet-34-A")
    assert literature.scratch_counterpart("lowrank_svd", 2.1) is None
    text = literature.counterpart_text("soft_filter_pruning", 2.1)
    assert "fine-tuned 72.29 vs Scratch-E 72.55 / Scratch-B 72.84 %" in text and "another method" in text
    assert b.fine_tuned.source in text and b.fine_tuned.source not in literature.counterpart_text(
        "prune_structured", 2.1, cite=False)


def test_a_scratch_row_without_its_fine_tuned_row_is_refused(tmp_path, monkeypatch):
    _refused(tmp_path, monkeypatch, "X (Scratch-E),scratch,resnet34,imagenet,73,72,1.2,s,src,read",
             "needs a fine-tuned row 'X \\(fine-tuned\\)'")
