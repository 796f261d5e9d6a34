"""The record schema: one declaration per field, and every view (table, Compare, card, CLI) follows it."""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from engine import cli, record, results, runner
from engine.store import Store

ROOT = Path(__file__).resolve().parent.parent
FAKE = record.Field("fake_score", "fake score", "points", "a metric only this test records", "%.2f", card=True,
                    compare=65, cli=record.Cli("fake", 6, ".2f", commands=("runs", "compare")))


def test_docs_record_md_is_generated_from_the_schema():
    assert record.DOC.read_text(encoding="utf-8") == record.markdown(), "run: python -m engine.record"


def test_every_view_derives_from_the_schema():
    assert results.columns() == [f.name for f in record.FIELDS if f.table and f.source != "view"]
    assert set(record.compare_defaults()) <= {f.name for f in record.FIELDS}
    assert {"size_bytes", "macs", "latency_ms", "best_latency_ms", "params"} == set(results.cost_axes().values())
    assert all(f.kind in record.KINDS for f in record.FIELDS)
    assert len({f.name for f in record.FIELDS}) == len(record.FIELDS)   # one declaration per field


@pytest.fixture()
def fake_field(monkeypatch, tmp_path):
    """The schema with one more field, and a workspace of two done runs that carry it."""
    monkeypatch.setattr(record, "FIELDS", (*record.FIELDS, FAKE))
    monkeypatch.setenv("SLIMBENCH_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("SLIMBENCH_NO_AUTOSTART", "1")
    store = Store(tmp_path / "ws")
    recs = []
    for i, (parent, score) in enumerate(((None, 12.25), ("base", 7.5))):
        spec = {"name": f"run {i}", "method": {"name": "baseline" if parent is None else "half", "params": {}},
                "data": {"name": "digits"}, "model": {"arch": "resnet18"}}
        run_id = store.create(spec, state="running", parent=recs[0]["run_id"] if parent else None)
        rec = {"run_id": run_id, "name": spec["name"], "method": spec["method"]["name"], "method_params": {},
               "arch": "resnet18", "dataset": "digits", "num_classes": 10, "test_images": 100,
               "parent": recs[0]["run_id"] if parent else None, "accuracy": 0.9 - i / 10, "size_bytes": 4e6 / (i + 1),
               "macs": 1e6, "params": 1000, "latency_ms": 1.0, "finished": time.time(), "fake_score": score}
        store.update(run_id, state="done", record=rec, finished=rec["finished"])
        recs.append(rec)
    return store, recs


def test_a_field_added_to_the_schema_shows_on_compare_the_card_and_the_cli(fake_field, capsys):
    store, recs = fake_field
    # the results table and Compare
    assert "fake_score" in results.columns()
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120)
    at.run()
    at.switch_page("views/compare.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0]
    shown = table.value.set_index("run_id")["fake_score"]
    assert shown.to_dict() == {r["run_id"]: r["fake_score"] for r in recs}
    assert "fake score" in str(table.proto)                      # under its label, with its format
    # the model card
    data = SimpleNamespace(class_names=[str(i) for i in range(10)], input_shape=(3, 8, 8), mean=[0.5], std=[0.25])
    assert runner.model_card(recs[0], data)["fake_score"] == 12.25
    # the CLI's listings
    assert cli.main(["runs"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[-1] == "fake" and {line.split()[-1] for line in out[1:]} == {"12.25", "7.50"}
    assert cli.main(["compare"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert " fake " in out[0] + " "
    rows = {line[2:].split()[0]: line for line in out[1:-1]}
    assert rows.keys() == {r["run_id"] for r in recs}
    for r in recs:
        assert f"{r['fake_score']:.2f}" in rows[r["run_id"]].split()
