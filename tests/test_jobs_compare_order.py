"""Jobs and Compare as a demanding user reads them (AppTest, hand-made records, nothing trains): a search is one
row on Jobs with its trials against its budget and folded under the table, a cancel of it stops its live trials
too; the Job select shortens a long name and writes it whole; Compare puts accuracy and the costs beside the
name; a number keeps its unit on its line."""
from __future__ import annotations

import re

import pytest

from conftest import plain
from engine import jobs, record
from engine.store import Store
from test_search_page import _run, insert_study, page
from views import job_groups
from views.common import keep_units

LIVE = "20260101-000010-live00"


def live_search(home) -> list[str]:
    """A running search with a budget of 8: one trial done, two running; its trials' ids."""
    ids = insert_study(home)
    store = Store(home)
    _run(store, LIVE, "autocompress", ids["base"], state="running", params={"trials": 8}, name="live search")
    trials = [f"20260101-00001{i + 1}-livet{i}" for i in range(3)]
    for i, t in enumerate(trials):
        _run(store, t, "prune_unstructured", LIVE, start=ids["base"], state="running" if i else "done",
             name=f"live search · trial {i}", accuracy=0.9, size_bytes=1000, macs=1000)
    return trials


def test_jobs_folds_a_searchs_trials_under_its_row_and_cancels_them_with_it(page_ws):
    trials = live_search(page_ws)
    at = page("jobs")
    queue = at.dataframe[0].value.set_index("id")
    assert LIVE in queue.index and not set(trials) & set(queue.index)
    assert queue.loc[LIVE, "activity"] == "1/8 trials ended · 2 running"
    assert queue.loc[LIVE, "progress"] == pytest.approx(1 / 8)
    assert queue.loc["20260101-000002-srch00", "activity"] == "3/3 trials ended"   # from the finished record
    # jobs running with nothing queued (a CLI's, say) need no worker: no "0 job(s) are queued" warning
    assert not any("no worker is running" in w.value for w in at.warning)
    folded = next(e for e in at.expander if "Trials of the search live search" in e.proto.label)
    assert "1/8 trials ended · 2 running" in folded.proto.label
    assert set(folded.dataframe[0].value["id"]) == set(trials)

    at.toggle(key="jobs_show_trials").set_value(True).run()
    shown = at.dataframe[0].value.set_index("id")
    assert set(trials) <= set(shown.index) and shown.loc[trials[1], "job"] == "↳ live search · trial 1"

    at.selectbox(key="job_select").set_value(LIVE).run()
    at.button(key="cancel").click().run()
    flagged = Store(page_ws).cancel_requested([LIVE, *trials])
    assert set(flagged) == {LIVE, *trials[1:]}    # the finished trial is left alone


@pytest.mark.fast
def test_a_cancel_of_a_search_takes_only_its_own_live_trials(tmp_path):
    trials = live_search(tmp_path / "ws")
    store = Store(tmp_path / "ws")
    other = _run(store, "20260101-000020-other0", "baseline", None, state="running", name="unrelated")
    rows = jobs.list_jobs(store)
    owner = job_groups.trial_owner(rows)
    ids = job_groups.with_live_trials([LIVE], rows, owner)
    assert ids[0] == LIVE and set(ids) == {LIVE, *trials[1:]} and other not in ids
    assert job_groups.with_live_trials([other], rows, owner) == [other]
    assert jobs.cancel_many(ids, store) == dict.fromkeys(ids)


def test_the_job_select_shortens_a_long_name_and_writes_it_whole(page_ws):
    name = ("Pipeline: prune 50 % → distil from the ResNet-56 teacher → quantise INT8 (per-channel, 512 "
            "calibration images)")
    Store(page_ws).create({"name": "waiting"}, state="queued")
    job = Store(page_ws).create({"name": name}, state="failed")
    at = page("jobs")
    assert any(w.value == "1 job is queued but no worker is running: start one to run it." for w in at.warning)
    assert not any(t.key == "jobs_show_trials" for t in at.toggle)   # no search: no trials to show
    select = at.selectbox(key="job_select")
    assert select.value == job
    label = next(o for o in select.options if o.endswith(job))
    assert label.endswith(f"… · {job}") and len(label) < len(name)
    assert any(name in plain(m.value) for m in at.markdown)


def test_compare_puts_accuracy_and_the_costs_beside_the_name(page_ws):
    insert_study(page_ws)
    at = page("compare")
    first = ["name", "method", "accuracy", "delta_accuracy", "delta_ci", "size_bytes", "x_smaller", "macs",
             "latency_ms", "x_faster"]
    assert record.compare_defaults()[:len(first)] == first
    assert list(at.dataframe[0].value.columns)[:len(first)] == first


@pytest.mark.fast
def test_a_number_keeps_its_unit_on_its_line():
    assert keep_units("plus ~10 s of start, 8 min, 1 h 02 min, 50 % at 16 px, ~1,800 img/s") == (
        "plus ~10\u00a0s of start, 8\u00a0min, 1\u00a0h 02\u00a0min, 50\u00a0% at 16\u00a0px, ~1,800\u00a0img/s")
    assert keep_units("ResNet-20 3 sizes, 2 CPU cores") == "ResNet-20 3 sizes, 2 CPU cores"   # no unit: unchanged


def test_experiments_keeps_the_presets_estimate_with_its_unit(page_ws):
    at = page("experiments")
    caption = next(c.value for c in at.caption if "Sized for" in c.value)
    # every number keeps its unit (a no-break space between them), and there is at least one such figure
    assert re.search(r"\d\u00a0(s|min|px)\b", caption)
    assert not re.search(r"\d (s|min|px)\b", caption), caption
