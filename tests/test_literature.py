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


def test_a_row_without_a_source_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "literature.csv"
    header = literature.TABLE.read_text().splitlines()[0]
    bad.write_text(header + "\nX,pruning,resnet20,cifar10,92,91,2,s,,read\n")
    monkeypatch.setattr(literature, "TABLE", bad)
    literature.points.cache_clear()
    try:
        with pytest.raises(ValueError, match="cite its source"):
            literature.points()
    finally:
        literature.points.cache_clear()
