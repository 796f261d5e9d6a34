"""Results that would mislead are marked (issue 25, item 3): chance-level runs, under-trained chains,
Δ accuracy in points, runtimes on the latency plot, latency text, and inference memory of a real net."""
from __future__ import annotations

import json
import math

import pytest

from conftest import cli_here, compare_page, plain
from engine import record, results
from engine.store import Store


def diag(n_classes: int, per_class: int, right: int) -> list[list[int]]:
    """A confusion matrix with ``right`` of each class's ``per_class`` images right, the rest one class over."""
    return [[right if j == i else per_class - right if j == (i + 1) % n_classes else 0 for j in range(n_classes)]
            for i in range(n_classes)]


def one_class(n_classes: int, per_class: int, answer: int) -> list[list[int]]:
    """Every image called class ``answer`` (the "everything is a Shirt" model)."""
    return [[per_class if j == answer else 0 for j in range(n_classes)] for _ in range(n_classes)]


def rec(run_id, parent=None, accuracy=0.95, n_classes=10, per_class=100, confusion=None, **kw):
    n = n_classes * per_class
    return {"run_id": run_id, "parent": parent, "name": run_id, "method": "prune_structured" if parent else "baseline",
            "arch": "resnet18", "dataset": "fashion-mnist", "num_classes": n_classes, "test_images": n,
            "test_set_hash": "h", "accuracy": accuracy,
            "confusion": confusion or diag(n_classes, per_class, round(accuracy * per_class)), **kw}


# -- the engine's flags -------------------------------------------------------------------------
@pytest.mark.fast
def test_chance_level_flags_one_class_answers_guessing_and_majority_guessing():
    shirt = rec("shirt", accuracy=0.1, confusion=one_class(10, 100, 6))
    assert "100 % of its answers are class 6" in results.chance_level(shirt)
    guessing = rec("guess", accuracy=0.11)            # spread answers, but 11 % on 10 classes: a guess
    assert "not above guessing (1 of 10 classes: 0.100)" in results.chance_level(guessing)
    # a test set 80 % of one class: 81 % accuracy is the blind "always say the big class" guess
    skewed = [[70, 10], [9, 11]]
    assert "always the most common class: 0.800" in results.chance_level(
        rec("skew", accuracy=0.81, n_classes=2, per_class=50, confusion=skewed))
    assert results.chance_level(rec("good", accuracy=0.9)) is None
    # 3 classes x 10 test images at 0.333: the user's from-scratch run in issue 25 (no confusion kept)
    tiny = rec("tiny", accuracy=1 / 3, n_classes=3, per_class=10, confusion=[])
    assert "1 of 3 classes" in results.chance_level(tiny)
    # 60 % on 2 classes x 500 images is above chance; on 2 x 15 images it is not distinguishable from it
    assert results.chance_level(rec("ok2", accuracy=0.6, n_classes=2, per_class=500)) is None
    assert results.chance_level(rec("few2", accuracy=0.6, n_classes=2, per_class=15)) is not None
    assert results.chance_level({"run_id": "bare"}) is None             # nothing measured: nothing claimed


@pytest.mark.fast
def test_chance_runs_stay_off_the_pareto_front_and_out_of_the_winner_unless_asked():
    df = results.table([rec("base", size_bytes=4000, latency_ms=4.0),
                        rec("pruned", "base", accuracy=0.93, size_bytes=1000, latency_ms=2.0),
                        rec("shirt", "base", accuracy=0.1, size_bytes=10, latency_ms=0.1,
                            confusion=one_class(10, 100, 6))]).set_index("run_id", drop=False)
    assert df.loc["shirt", "chance_level"] and not df.loc["pruned", "chance_level"]
    assert df.loc["shirt", "flags"].startswith("chance level: 100 % of its answers are class 6")
    assert set(df.index[results.pareto_mask(df, "size_bytes")]) == {"base", "pruned"}
    assert set(df.index[results.pareto_mask(df, "size_bytes", include_chance=True)]) == {"base", "pruned", "shirt"}
    assert results.winners(df, "size").iloc[0]["run_id"] == "pruned"
    assert results.winners(df, "size", include_chance=True).iloc[0]["run_id"] == "shirt"
    assert list(results.pareto_front(df, "size_bytes")["run_id"]) == ["pruned", "base"]


@pytest.mark.fast
def test_an_under_trained_base_flags_its_whole_chain():
    history = [{"phase": "train", "epoch": 1, "val_acc": 0.5}, {"phase": "train", "epoch": 2, "val_acc": 0.7}]
    df = results.table([rec("base", history=history), rec("child", "base", accuracy=0.93),
                        rec("grandchild", "child", accuracy=0.92), rec("other", history=history[1:])]
                       ).set_index("run_id")
    rose = "its validation accuracy still rose 20.0 points in its last epoch"
    assert df.loc["base", "flags"] == "may be under-trained: " + rose
    assert df.loc["child", "flags"] == "its base base may be under-trained: " + rose
    assert df.loc["grandchild", "flags"] == "its base base may be under-trained: " + rose
    assert df.loc["other", "flags"] == "may be under-trained: it trained for a single epoch"


@pytest.mark.fast
def test_runtime_names_what_was_timed():
    assert results.runtime({}) == "PyTorch eager"
    assert results.runtime({"precision": "float16"}) == "PyTorch eager float16"
    assert results.runtime({"precision": "int8", "runtime": "onnxruntime CPU (INT8 kernels)"}) == "ONNX Runtime INT8"


@pytest.mark.fast
def test_delta_accuracy_is_shown_in_points_everywhere():
    """Every Δ accuracy field Compare shows is scaled to points, its format and label say so, and the
    CLI prints points too (the record and the CSV keep fractions, as RECORD.md states)."""
    deltas = [f for f in record.FIELDS if f.name.startswith("delta_") and f.source == "base"]
    assert {f.name for f in deltas} == {"delta_accuracy", "delta_ci_low", "delta_ci_high"}
    for f in deltas:
        assert f.shown_scale == 100 and "(pt)" in f.label and f.format == "%+.1f", f.name
        assert f.cli is None or (f.cli.scale == 100 and "pt" in f.cli.header), f.name
    assert "(pt)" in record.get("delta_ci").label


# -- formatting -----------------------------------------------------------------------------------
@pytest.mark.fast
@pytest.mark.parametrize("ms,text", [(0, "0 ms"), (4.2e-6, "0.004 µs"), (0.0042, "4.2 µs"), (0.042, "0.042 ms"),
                                     (3.14159, "3.14 ms"), (42.42, "42.4 ms"), (215.4, "215 ms"),
                                     (1050, "1.05 s"), (12_345, "12.3 s"), (1.05e7, "10,500 s"),
                                     (float("nan"), "—"), (None, "—")])
def test_latency_text_is_never_scientific(ms, text):
    from views.common import fmt_ms
    assert fmt_ms(ms) == text


@pytest.mark.fast
def test_latency_text_over_every_magnitude_has_no_exponent():
    from views.common import fmt_ms
    for e in range(-12, 13):
        for m in (1.0, 1.05, 9.99):
            out = fmt_ms(m * 10 ** e)
            assert "e+" not in out and "e-" not in out and out.endswith(("ms", "µs", " s")), out


def test_inference_memory_of_resnet18_is_megabytes_not_kilobytes():
    """Issue 25's "8 KB for ResNet-18" was the old RSS-growth figure; the recorded inference memory is
    counted tensor by tensor: at batch 64 of 32x32 images the input alone is 786 kB, and the first
    block's activations (64 x 64 x 16 x 16 floats, 4.2 MB) are held at once."""
    import torch

    from engine import measure, models
    from views.common import fmt_bytes
    net = models.build("resnet18", 10, small_input=False).eval()
    peak = measure.activation_peak_bytes(net, torch.randn(64, 3, 32, 32))
    assert peak > 64 * 64 * 16 * 16 * 4
    assert fmt_bytes(peak).endswith("MB")
    field = record.get("activation_peak_bytes")
    assert field.unit == "bytes" and "input batch" in field.help


# -- Compare (CLI and AppTest) ----------------------------------------------------------------------
def insert_study(home) -> None:
    """A base still learning, its pruned child, and a tiny INT8 child that calls everything class 6."""
    store = Store(home)
    history = [{"phase": "train", "epoch": 1, "val_acc": 0.5}, {"phase": "train", "epoch": 2, "val_acc": 0.7}]
    for i, r in enumerate([rec("base", size_bytes=4_000_000, macs=4e8, latency_ms=1050.0, latency_p90_ms=1200.0,
                               history=history),
                           rec("pruned", "base", accuracy=0.93, size_bytes=1_000_000, macs=1e8, latency_ms=2.0,
                               start_accuracy=0.95),
                           rec("shirt", "base", accuracy=0.1, size_bytes=10_000, macs=1e6, latency_ms=0.5,
                               confusion=one_class(10, 100, 6), start_accuracy=0.95,
                               precision="int8", runtime="onnxruntime CPU (INT8 kernels)")]):
        store.create({"name": r["name"], "data": {"name": "digits"}, "model": {"arch": "resnet18"},
                      "method": {"name": r["method"], "params": {}}}, state="done", run_id=r["run_id"],
                     parent=r["parent"], created=1000.0 + i)
        store.update(r["run_id"], record={**r, "finished": 1000.0 + i}, finished=1000.0 + i)


@pytest.mark.fast
def test_cli_compare_keeps_a_chance_run_off_the_front_and_the_ranking(home):
    insert_study(home)
    p = cli_here("compare", "--axis", "size", home=home)
    assert p.returncode == 0, p.stderr
    starred = {line.split()[1] for line in p.stdout.splitlines() if line.startswith("* ")}
    assert starred == {"base", "pruned"}
    flagged = [line for line in p.stdout.splitlines() if line.startswith("! ")]
    assert len(flagged) == 1 and flagged[0].startswith("! shirt chance level: 100 % of its answers are class 6")
    assert "its base base may be under-trained" in flagged[0] and "--include-chance lets it in" in flagged[0]
    p = cli_here("compare", "--best", "size", home=home)
    assert p.stdout.strip().splitlines()[-1].startswith("winner by size (2 run(s) meet the limits): pruned ")
    p = cli_here("compare", "--best", "size", "--include-chance", home=home)
    assert p.stdout.strip().splitlines()[-1].startswith("winner by size (3 run(s) meet the limits): shirt ")


def test_compare_flags_a_chance_run_and_keeps_it_from_the_winner(tmp_path, monkeypatch):
    at = compare_page(tmp_path / "ws", monkeypatch, insert_study)
    assert not at.exception, [e.value for e in at.exception]
    warning = "\n".join(plain(str(w.value)) for w in at.warning)
    assert "1 run in view answers at chance level: shirt: 100 % of its answers are class 6" in warning
    chance = next(plain(str(w.value)) for w in at.warning if "at chance level" in str(w.value))
    assert "under-trained" not in chance and "It is kept off the Pareto front" in chance   # only why it is at chance
    table = at.dataframe[0].value.set_index("run_id")
    formats = {c: v.get("type_config", {}).get("format")
               for c, v in json.loads(at.dataframe[0].proto.columns).items()}
    assert formats["size_bytes"] == formats["macs"] == "localized"   # 44,000,000 grouped, not 44000000
    plot = json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]
    assert plot["legend"]["orientation"] == "h"     # below the plot: beside it, a narrow page had a sliver of plot
    assert table.loc["shirt", "chance_level"] and not table.loc["pruned", "chance_level"]
    assert not table.loc["shirt", "pareto"]                          # smallest, yet off the front
    assert "its base base may be under-trained" in table.loc["pruned", "flags"]   # carried from the base
    assert table.loc["pruned", "delta_accuracy"] == pytest.approx(-2.0)   # points, not -0.02
    assert table.loc["shirt", "runtime"] == "ONNX Runtime INT8"

    at.selectbox(key="w_best").set_value("size")
    at.run()
    success = "\n".join(plain(str(s.value)) for s in at.success)
    assert "`pruned`" in success and "`shirt`" not in success and "(-2.0 pt)" in success

    at.checkbox(key="f_chance").check()
    at.run()
    assert "`shirt`" in "\n".join(plain(str(s.value)) for s in at.success)
    assert at.dataframe[0].value.set_index("run_id").loc["shirt", "pareto"]

    at.radio(key="axis").set_value(next(k for k, v in results.cost_axes().items() if v == "latency_ms"))
    at.selectbox(key="detail_run").set_value("base")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any('"error_x"' in str(c.proto.spec) for c in at.get("plotly_chart"))   # median-to-p90 bars
    tiles = {m.label: m.value for m in at.metric}
    assert tiles["Latency (its job)"] == "1.05 s"
    at.selectbox(key="detail_run").set_value("shirt")
    at.run()
    assert "At chance level" in "\n".join(plain(str(e.value)) for e in at.error)
    assert not math.isnan(table.loc["shirt", "accuracy"])
