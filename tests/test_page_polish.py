"""What a demanding user saw wrong walking every page (AppTest): long job names cut on Jobs, the sidebar's
block written more than once, "None" and "1 images" on Compare, a long name pushing Compare's numbers away."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from bench.synthetic import insert_synthetic_runs
from conftest import compare_page, plain
from engine.store import Store

ROOT = Path(__file__).resolve().parent.parent
LONG = ("Pipeline: prune 50 % → distil from the ResNet-56 teacher → quantise INT8 (per-channel, 512 calibration "
        "images)")


def app(home: Path, monkeypatch, page: str | None = None) -> AppTest:
    monkeypatch.setenv("SLIMBENCH_HOME", str(home))
    monkeypatch.setenv("SLIMBENCH_NO_AUTOSTART", "1")
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120)
    at.run()
    if page:
        at.switch_page(f"views/{page}.py")
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.fast
def test_jobs_table_wraps_a_long_job_name_whole(tmp_path, monkeypatch):
    """Names were cut at the job column's width, with no hover text to read the rest (a table cell has none)."""
    from views.jobs import CHARS_PER_LINE, LINE_PX, PAD_PX
    store = Store(tmp_path / "ws")
    store.create({"name": "short", "experiment": "e"}, state="queued")
    at = app(tmp_path / "ws", monkeypatch, "jobs")
    assert at.dataframe[0].proto.row_height == 0  # every name fits: one-line rows, as before
    # no worker runs: the experiment's time left starts only when one does (it read as if already counting)
    assert any(c.value.startswith("Experiment **e**: 0/1 job ended") and
               c.value.endswith("(no worker is running: the time counts from when one starts)") for c in at.caption)
    store.create({"name": LONG}, state="failed")
    at.run()
    table = at.dataframe[0].proto
    assert table.row_height > 64  # Streamlit wraps a cell's text only in rows taller than 4 rem
    assert (table.row_height - PAD_PX) // LINE_PX * CHARS_PER_LINE >= len(LONG)
    # what a user reads first comes first; labels and ids follow, a sideways scroll away
    assert list(table.column_order)[:5] == ["job", "state", "progress", "activity", "error"]


@pytest.mark.fast
def test_each_page_writes_the_sidebar_block_once(tmp_path, monkeypatch):
    """One render of each page draws the sidebar's panel once: one run of it, each of its elements sent
    once, one heading, one pair of counts and one device line in the tree."""
    import views.common as common
    from streamlit.runtime.scriptrunner_utils.script_run_context import ScriptRunContext
    runs, sent = [], []
    panel = common.sidebar
    monkeypatch.setattr(common, "sidebar", lambda busy: (runs.append(busy), panel(busy))[1])
    enqueue = ScriptRunContext.enqueue

    def recording(self, msg):
        if msg.HasField("delta") and msg.metadata.delta_path[:1] == [1]:   # 1: the sidebar's root
            sent.append(tuple(msg.metadata.delta_path))
        return enqueue(self, msg)
    monkeypatch.setattr(ScriptRunContext, "enqueue", recording)
    Store(tmp_path / "ws").create({"name": "waiting"}, state="queued")
    at = app(tmp_path / "ws", monkeypatch)
    for page in ("experiments", "jobs", "compare", "try_image", "hardware"):
        at.switch_page(f"views/{page}.py")
        runs.clear()
        sent.clear()
        at.run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert len(runs) == 1, page
        assert sent and len(sent) == len(set(sent)), (page, sorted(sent))
        assert [m.value for m in at.sidebar.markdown].count("### Slimbench") == 1, page
        assert [m.label for m in at.sidebar.metric] == ["Queued", "Running"], page
        assert sum("Device:" in c.value for c in at.sidebar.caption) == 1, page


def fill_study(home: Path) -> None:
    """A base and its child, the child with one newly wrong and two newly right answers of 300, no group."""
    store = Store(home)
    base, child = insert_synthetic_runs(store, 2)
    rec = store.get(child)["record"]
    store.update(child, record={**rec, "name": LONG, "test_images": 300, "agreement": 0.99,
                                "flips_to_wrong": 1 / 300, "flips_to_right": 2 / 300})


def test_compare_says_one_image_shows_dashes_and_keeps_a_long_name_narrow(tmp_path, monkeypatch):
    at = compare_page(tmp_path / "ws", monkeypatch, fill_study)
    assert not at.exception, [e.value for e in at.exception]
    at.selectbox(key="detail_run").set_value("synthetic-0-00001")
    at.run()
    flips = {m.label: m.proto.delta for m in at.metric if m.label in ("Newly wrong", "Newly right")}
    assert flips == {"Newly wrong": "1 image", "Newly right": "2 images"}
    table = next(d.proto for d in at.dataframe if "accuracy" in d.value.columns)
    assert table.placeholder == "—"  # a run without a measurement reads as the tiles do, not "None"
    name = json.loads(table.columns)["name"]
    assert name["width"] == "medium" and name["pinned"] is True


def blocks(node) -> list:
    """Every block under an AppTest node, depth first."""
    found = []
    for child in getattr(node, "children", {}).values():
        if type(child).__name__ == "Block" or hasattr(child, "children"):
            found.append(child)
            found += blocks(child)
    return found


def test_try_an_image_gives_each_model_a_block_of_its_own_width(tmp_path, monkeypatch):
    """Three models in three page-width columns cut their probabilities off on a narrow page and let a
    224 px map overlap the next model's answers: each now has a fixed-width block, as many to a row as fit."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    from engine import export, layout, models
    store = Store(tmp_path / "ws")
    meta = {"class_names": ["a", "b", "c"], "mean": [0.2], "std": [0.3], "input_size": [1, 16, 16], "channels": 1}
    for i in range(3):
        rid = store.create({"name": f"model {i}", "data": {"name": "digits"}, "model": {"arch": "resnet20"},
                            "method": {"name": "baseline", "params": {}}}, state="done", created=1000.0 + i)
        store.update(rid, record={"run_id": rid, "name": f"model {i}", "method": "baseline"}, finished=1000.0 + i)
        torch.manual_seed(i)
        model = models.build("resnet20", 3, True, 0.25).eval()
        store.run_dir(rid).mkdir(parents=True, exist_ok=True)
        export.save_bundle(export.make_bundle(model, arch="resnet20", num_classes=3, small_input=True, meta=meta),
                           store.run_dir(rid) / layout.CHECKPOINT)
    at = app(tmp_path / "ws", monkeypatch, "try_image")
    at.multiselect(key="runs").set_value([r["id"] for r in store.list("done")])
    buf = io.BytesIO()
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(buf, format="PNG")
    at.file_uploader(key="images").set_value([("ramp.png", buf.getvalue(), "image/png")])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    fixed = [b for b in blocks(at.main) if getattr(getattr(b, "proto", None), "width_config", None)
             and b.proto.width_config.pixel_width > 0]
    assert len(fixed) == 3
    for b in fixed:  # each holds one model's answers and its map, whole
        assert len(b.dataframe) == 1 and len(b.image) == 1
        assert b.proto.width_config.pixel_width >= 224  # the map's width


def fill_paired(home: Path) -> None:
    """A base and three runs timed by their own jobs SLOWER than the base's job timed it: one paired 1.3x
    faster against the base, one never paired, and one paired only against its start, the never-paired run
    (so no paired figure reaches the base along its chain)."""
    store = Store(home)
    base, paired, indirect, unpaired = insert_synthetic_runs(store, 4)
    for rid in (base, paired, indirect, unpaired):
        rec = store.get(rid)["record"]
        keep = {k: v for k, v in rec.items() if not k.startswith("paired")}
        store.update(rid, record={**keep, "latency_ms": 1.0 if rid == base else 1.2})
    rec = store.get(paired)["record"]
    store.update(paired, record={**rec, "paired_ref": base, "paired_speedup": 1.3, "paired_speedup_range": [1.2, 1.4]})
    rec = store.get(indirect)["record"]
    store.update(indirect, record={**rec, "parent": unpaired, "paired_ref": unpaired, "paired_speedup": 1.25})


def test_compare_latency_tile_prefers_the_paired_speed_up_and_says_what_it_is(tmp_path, monkeypatch):
    """Its own job timed the run slower than the base's job timed the base, while one interleaved pair found it
    1.3x faster: the tile's speed-up is the paired one and says so, a run never paired says "separate jobs",
    and a ratio below 1 reads "slower", never "0.83x faster"."""
    at = compare_page(tmp_path / "ws", monkeypatch, fill_paired)
    assert not at.exception, [e.value for e in at.exception]
    runs = {r["id"]: r for r in Store(tmp_path / "ws").list("done")}
    names = sorted(runs)                                 # insert_synthetic_runs: base first, then its children
    tiles = {}
    for rid in names:
        at.selectbox(key="detail_run").set_value(rid)
        at.run()
        tile = next(m for m in at.metric if m.label.startswith("Latency"))
        tiles[rid] = (tile.label, tile.value, tile.proto.delta, tile.proto.help)
    base, paired, indirect, unpaired = (tiles[r] for r in names)
    assert {t[0] for t in tiles.values()} == {"Latency (its job)"}
    assert base[2] == "" and paired[1] == "1.20 ms"
    assert paired[2] == "1.30x faster, paired" and "interleaved" in paired[3] and "1.20–1.40x" in paired[3]
    assert indirect[2] == "1.25x faster than its start, paired"
    assert unpaired[2] == "1.20x slower, separate jobs" and "each timed by its own job" in unpaired[3]
    assert not any("0." in (t[2] or "") and "faster" in (t[2] or "") for t in tiles.values())


LONG_EXPERIMENT = "Quick tour on Fashion-MNIST 16 px: ResNet-20 base, every preset method with its control, December"


@pytest.mark.fast
def test_a_long_option_name_is_elided_in_the_middle_and_given_in_full_in_the_help():
    from views.common import OPTION_CHARS, elide, full_names_help
    short = elide(LONG_EXPERIMENT)
    assert len(short) <= OPTION_CHARS and short.startswith("Quick tour on Fashion") and short.endswith("December")
    assert " … " in short and elide("short name") == "short name"
    assert len(elide("x" * 500)) == OPTION_CHARS
    text = full_names_help("Experiment names", ["short name", LONG_EXPERIMENT, "[a](javascript:x) " * 5])
    assert LONG_EXPERIMENT in plain(text) and "short name" not in text and "](javascript" not in text
    assert full_names_help("Group names", ["a", "b"]) is None


def fill_long_experiment(home: Path) -> None:
    store = Store(home)
    for rid, exp in zip(insert_synthetic_runs(store, 2), (LONG_EXPERIMENT, "short")):
        store.update(rid, record={**store.get(rid)["record"], "experiment": exp})


def test_compare_filter_shows_a_long_experiment_name_whole_in_its_help(tmp_path, monkeypatch):
    at = compare_page(tmp_path / "ws", monkeypatch, fill_long_experiment)
    assert not at.exception, [e.value for e in at.exception]
    box = at.multiselect(key="f_experiment")
    assert all(len(o) <= 48 for o in box.options) and any(o.endswith("December") for o in box.options)
    assert LONG_EXPERIMENT in plain(box.help)
    box.select(LONG_EXPERIMENT)
    at.run()
    assert set(at.dataframe[0].value["experiment"]) == {LONG_EXPERIMENT}     # the filter keeps the full value


def fill_unnamed(home: Path) -> None:
    """A named base and its child run without a name (`python -m engine run` of a spec with none), the child at
    chance level (every answer class 1). Names of both kinds in one column: all None stayed None."""
    store = Store(home)
    base, child = insert_synthetic_runs(store, 2)
    rec = store.get(child)["record"]
    store.update(child, record={**rec, "name": None, "accuracy": 0.1,
                                "confusion": [[0, 5] + [0] * 8 for _ in range(10)]})


def test_an_unnamed_run_reads_by_its_id_never_as_nan(tmp_path, monkeypatch):
    """pandas 3 keeps a missing name as NaN, which is truthy: `name or run_id` gave "nan · RUN" in the run
    picker, "nan: 93 % of its answers are class 1" in the chance warning and "Pipeline nan" above its steps."""
    from engine import results
    at = compare_page(tmp_path / "ws", monkeypatch, fill_unnamed)
    assert not at.exception, [e.value for e in at.exception]
    base, child = sorted(r["id"] for r in Store(tmp_path / "ws").list("done"))
    names = results.table(results.records(Store(tmp_path / "ws"))).set_index("run_id")["name"]
    assert names[base] == "synthetic #0" and names[child] is None
    picker = at.selectbox(key="detail_run")
    method = Store(tmp_path / "ws").get(child)["record"]["method"]
    assert sorted(picker.options) == sorted([f"synthetic #0 · {base}", f"{method} · {child}"])  # as Jobs names it
    chance = [w.value.replace("\\", "") for w in at.warning if "chance level" in w.value]  # Markdown escapes
    assert chance and f"{child}: " in chance[0]
    shown = " ".join(str(e.value) for e in (*at.warning, *at.markdown, *at.caption, *at.success))
    assert "nan" not in shown.replace("nance", "")  # "nance" as in "finance"; no word here has "nan" otherwise


def fill_deployed(home: Path) -> None:
    """A base and its child, the child timed in eager PyTorch only: no energy counter, never compiled."""
    store = Store(home)
    base, child = insert_synthetic_runs(store, 2)
    rec = store.get(child)["record"]
    store.update(child, record={**rec, "best_runtime": "eager", "energy_mj_per_image": None, "flips_to_wrong": 0.01,
                                "flips_to_right": 0.02, "deploy": {"eager": {
        "latency_ms": 1.5, "throughput": 700.0, "energy_mj_per_image": None, "agreement": 1.0, "verified": True,
        "loaded": False, "compile_seconds": None, "energy_source": "not available: no RAPL counter"}}})


def test_the_runtimes_and_record_tables_write_a_dash_for_what_was_not_measured(tmp_path, monkeypatch):
    """Run details' runtimes table read "None" under energy and compile time, and every recorded measurement
    "None" for an unset field, where the results table and the tiles write "—"."""
    at = compare_page(tmp_path / "ws", monkeypatch, fill_deployed)
    assert not at.exception, [e.value for e in at.exception]
    at.selectbox(key="detail_run").set_value("synthetic-0-00001")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    runtimes = next(d for d in at.dataframe if "img/s" in d.value.columns)
    assert runtimes.value["energy (mJ/image)"].isna().all() and runtimes.proto.placeholder == "—"
    fields = next(d.value for d in at.dataframe if list(d.value.columns) == ["field", "value"])
    shown = dict(zip(fields["field"], fields["value"]))
    assert shown["energy_mj_per_image"] == "—" and "None" not in set(shown.values())


def test_compares_log_axis_labels_each_tick_in_full(tmp_path, monkeypatch):
    """Sizes from 123 kB to 1.1 MB were labelled "2 3 4 5 6 7 8 9 1M" (Plotly's log axis under a decade or two):
    a bare "2" for 200 kB. Every tick now carries its value: "200k", "500k", "1M"."""
    from views.share import log_ticks
    assert log_ticks([122_729, 1_138_815]) == ([1e5, 2e5, 5e5, 1e6], ["100k", "200k", "500k", "1M"])
    assert log_ticks([0.11, 6.2])[1] == ["0.1", "0.2", "0.5", "1", "2", "5"]   # latency in ms: no "100m"
    at = compare_page(tmp_path / "ws", monkeypatch, fill_study)
    assert not at.exception, [e.value for e in at.exception]
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    axis = spec["layout"]["xaxis"]
    assert axis["type"] == "log" and axis["tickmode"] == "array" and len(axis["tickvals"]) >= 2
    assert all(t[-1] in "kMG" for t in axis["ticktext"])   # sizes are bytes: every tick is kB or more here
    sizes = [r["record"]["size_bytes"] for r in Store(tmp_path / "ws").list("done")]
    assert min(axis["tickvals"]) <= min(sizes) * 1.5 and max(axis["tickvals"]) >= max(sizes) / 1.5


def test_retry_all_of_an_experiment_leaves_a_searchs_stopped_trials_to_the_search(tmp_path, monkeypatch):
    """A finished search stopped one trial on purpose (cancelled); with one failed job beside it, "Retry all" read
    (2) and would have rerun that trial alone, outside its search. It reads (1) and queues the failed job only."""
    store = Store(tmp_path / "ws")
    search = store.create({"name": "my search", "experiment": "e", "method": {"name": "autocompress"}}, state="done")
    trial = store.create({"name": "my search · trial 1", "experiment": "e",
                          "method": {"name": "prune_unstructured"}}, state="cancelled", parent=search)
    failed = store.create({"name": "lowrank", "experiment": "e", "method": {"name": "lowrank_svd"}}, state="failed")
    at = app(tmp_path / "ws", monkeypatch, "jobs")
    button = at.button(key="bulk_retry_experiment")
    assert button.label == "Retry all (1)" and "left to the search" in button.help
    button.click()
    at.run()
    assert store.get(failed)["state"] == "queued" and store.get(trial)["state"] == "cancelled"


@pytest.mark.fast
def test_floats_shown_to_four_significant_digits_everywhere_in_a_parameter_tree():
    from views.common import short_floats
    params = {"target_macs": 1 / 2.1, "steps": 3, "widths": [0.123456, 2.0], "name": "l1", "kd": None}
    assert short_floats(params) == {"target_macs": 0.4762, "steps": 3, "widths": [0.1235, 2.0], "name": "l1",
                                    "kd": None}
    assert params["target_macs"] == 1 / 2.1  # the plan's own values are untouched
