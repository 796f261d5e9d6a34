"""Honest progress and bulk job actions (issue 25, items 1-2): phases in words, a log line per epoch,
estimates from this machine's history (presets, a launched plan's ETA), bulk cancel/retry from the CLI
and from Jobs (which shows running jobs first and hides cancelled ones)."""
from __future__ import annotations

import time

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from conftest import ROOT, cli_here
from engine import estimate, jobs, phases, presets, procs, results
from engine.store import Store
from engine.validation import check_spec

SPEC = {"data": {"name": "digits"}, "model": {"arch": "resnet18"}, "train": {"device": "cpu"}}


@pytest.mark.fast
@pytest.mark.parametrize("state, ev, words", [
    ("queued", {"phase": "queued"}, "queued"),
    ("running", {"phase": "data"}, "loading data"),
    ("running", {"phase": "train", "epoch": 3, "epochs": 8, "step": 4, "steps": 10}, "training epoch 3/8"),
    ("running", {"phase": "finetune 2/3", "epoch": 1, "epochs": 1}, "fine-tuning 2/3 epoch 1/1"),
    ("running", {"phase": "step 1/2 prune_structured: finetune 1/3", "epoch": 1, "epochs": 2},
     "step 1/2 prune_structured: fine-tuning 1/3 epoch 1/2"),
    ("running", {"phase": "calibrate"}, "calibrating"),
    ("running", {"phase": "export"}, "exporting"),
    ("running", {"phase": "measure"}, "measuring"),
    ("running", {"phase": "measure:paired"}, "measuring (paired speed-up)"),
    ("running", {"phase": "runtime:onnxruntime_cpu"}, "measuring onnxruntime cpu"),
    ("running", {"phase": "sensitivity", "step": 5, "steps": 16, "layer": "layer1.0.conv1"},
     "sensitivity probe 5/16 (layer1.0.conv1)"),
    ("done", {"phase": "measure"}, "done"),
])
def test_a_job_phase_reads_as_words(state, ev, words):
    assert phases.label(state, ev) == words
    assert results.job_progress({"state": state, "last_event": ev})["phase"] == words


@pytest.mark.fast
def test_a_job_trained_to_its_last_epoch_but_still_measuring_says_measuring():
    last_epoch = {"phase": "train:val", "epoch": 2, "epochs": 2}
    assert phases.fraction("running", last_epoch) == 1.0
    p = results.job_progress({"state": "running", "last_event": {"phase": "measure"}})
    assert p["phase"] == "measuring" and p["progress"] is None   # no bar stuck at 100 %: the words say where it is


def test_a_run_records_its_phases_in_order_and_logs_a_line_per_epoch(tiny_base, session_home):
    store = Store(session_home)
    run_id = tiny_base["run_id"]
    said = []
    for ev in store.events(run_id):
        words = phases.label("running", ev).split(" epoch ")[0]
        if not said or said[-1] != words:
            said.append(words)
    # the phases the user sees, in the order they happen (a foreground run has no "queued" event)
    order = ["loading data", "starting the method", "training", "evaluating on the test set", "exporting",
             "measuring"]
    assert [w for w in said if w in order] == order, said
    log = jobs.job_log(run_id, store)
    epochs = [ln for ln in log.splitlines() if " train epoch " in ln]
    assert len(epochs) == 2 and all("train loss" in ln and "val acc" in ln and ln.endswith(" s") for ln in epochs)
    assert "train epoch 1/2" in epochs[0] and "train epoch 2/2" in epochs[1]


def _done(store: Store, spec: dict, seconds: float, host: str | None = None, name: str | None = None) -> str:
    """A finished run of ``spec`` that took ``seconds`` on ``host`` (default: this one)."""
    run_id = store.create({**spec, **({"name": name} if name else {})}, state="done")
    t0 = time.time() - 10_000
    store.update(run_id, started=t0, finished=t0 + seconds, host=host or procs.host())
    return run_id


@pytest.mark.fast
def test_a_job_is_estimated_from_runs_here_with_its_settings_else_its_method_and_data(tmp_path):
    store = Store(tmp_path / "ws")
    spec = check_spec(SPEC).to_dict()
    longer = check_spec({**SPEC, "train": {"device": "cpu", "epochs": 9}}).to_dict()
    _done(store, spec, 40, name="first")
    _done(store, {**spec, "experiment": "other label", "train": {**spec["train"], "seed": 7}}, 60)
    _done(store, spec, 5000, host="another-machine")          # another host's time says nothing of this one
    h = estimate.History(store)
    assert h.job(spec) == estimate.JobEstimate(50, 2, "same settings")
    assert h.job(longer) == estimate.JobEstimate(50, 2, "same method and data, other settings")
    assert h.job({**spec, "data": {**spec["data"], "name": "fashion-mnist"}}).seconds is None


@pytest.mark.fast
def test_a_plan_waits_for_its_longest_chain_and_shares_the_rest_among_the_jobs_at_once():
    # base 100 s, then three 50 s jobs starting from it
    assert estimate._wall([100, 50, 50, 50], [None, 0, 0, 0], 1) == 250
    assert estimate._wall([100, 50, 50, 50], [None, 0, 0, 0], 4) == 150   # the chain base -> child
    assert estimate.duration(45) == "45 s" and estimate.duration(600) == "10 min"
    assert estimate.duration(3900) == "1 h 05 min"


@pytest.mark.fast
def test_a_preset_says_how_long_it_takes_here_from_history_else_that_there_is_none(tmp_path):
    store = Store(tmp_path / "ws")
    name = "Quick tour (CPU)"
    text = presets.describe(name, store)
    assert "No run like its jobs has finished on this machine yet" in text and "not measured here" in text
    ok, _ = presets.check(presets.quick_tour())
    canonical = [check_spec(presets.resolve([s], presets.ref(0))[0]).to_dict() for s in ok]
    _done(store, canonical[0], 300)                           # the base only: the others have no history
    part = presets.describe(name, store)
    assert f"At least 5 min, from 1 finished run on this machine; {len(ok) - 1} of its {len(ok)} jobs have no " \
           "history here" in part
    for s in canonical[1:]:
        _done(store, s, 60)
    full = presets.describe(name, store)
    # one job at a time: 300 s + 60 s per method job, all of them measured here
    minutes = round((300 + 60 * (len(ok) - 1)) / 60)
    assert f"About {minutes} min, from {len(ok)} finished runs on this machine." in full
    assert presets.PRESETS[name].uses in full


@pytest.mark.fast
def test_a_launched_plans_eta_comes_from_progress_and_history(tmp_path):
    store = Store(tmp_path / "ws")
    spec = check_spec(SPEC).to_dict()
    _done(store, spec, 100)
    now = time.time()
    rows = [{"state": "done", "spec": spec},
            {"state": "running", "spec": spec, "started": now - 30, "last_event": {"phase": "measure"}},
            {"state": "queued", "spec": spec}]
    left = estimate.remaining(rows, store, now=now)
    assert (left.done, left.jobs, left.unknown, left.finished) == (1, 3, 0, False)
    assert left.seconds == pytest.approx(70 + 100)
    assert left.text() == "1/3 jobs ended; about 3 min left"
    # a phase's own ETA counts where the job has outrun its history; a job like none here is unknown
    rows[1]["started"] = now - 500
    rows[1]["last_event"] = {"phase": "train", "epoch": 1, "epochs": 4, "step": 1, "steps": 2, "eta_s": 40}
    rows[2]["spec"] = {**spec, "data": {"name": "fashion-mnist"}}
    left = estimate.remaining(rows, store, now=now)
    assert left.seconds == pytest.approx(40) and left.unknown == 1
    assert "at least 40 s left (1 job(s) have no history here)" in left.text()
    assert estimate.remaining([{"state": "done", "spec": spec}], store).text() == "its 1 job ended"  # not "all 1 jobs"


@pytest.mark.fast
def test_cli_cancels_and_retries_several_jobs_or_a_whole_experiment(home, tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMBENCH_NO_AUTOSTART", "1")
    store = Store(home)
    shoes = [jobs.submit({**SPEC, "experiment": "shoes"}, store) for _ in range(3)]
    other = jobs.submit({**SPEC, "experiment": "hats"}, store)
    p = cli_here("cancel", "--experiment", "shoes", home=home)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [w for j in shoes for w in ("cancel", "requested:", j)]
    assert [store.get(j)["state"] for j in shoes] == ["cancelled"] * 3 and store.get(other)["state"] == "queued"

    p = cli_here("retry", shoes[0], shoes[1], "nope", home=home)
    assert p.returncode == 1 and p.stdout.split() == shoes[:2]
    assert "cannot retry nope: no job 'nope'" in p.stderr
    assert [store.get(j)["state"] for j in shoes] == ["queued", "queued", "cancelled"]
    p = cli_here("retry", "--experiment", "shoes", home=home)     # the one still cancelled
    assert p.returncode == 0 and p.stdout.split() == [shoes[2]]

    p = cli_here("cancel", other, shoes[0], home=home)
    assert p.returncode == 0 and store.get(other)["state"] == "cancelled"
    p = cli_here("cancel", other, home=home)
    assert p.returncode == 1 and f"cannot cancel {other}: job {other} is already cancelled" in p.stderr
    for args in ((), (other, "--experiment", "hats")):
        p = cli_here("cancel", *args, home=home)
        assert p.returncode == 2 and "ID:" in p.stderr
    jobs.cancel_many(shoes, store)


def jobs_page(home, monkeypatch, launched: list[str]) -> AppTest:
    monkeypatch.setenv("SLIMBENCH_HOME", str(home))
    monkeypatch.setenv("SLIMBENCH_NO_AUTOSTART", "1")
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120)
    at.session_state["launched"] = launched
    at.run()
    at.switch_page("views/jobs.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_jobs_shows_running_first_hides_cancelled_and_acts_on_several(home, monkeypatch):
    store = Store(home)
    monkeypatch.setenv("SLIMBENCH_NO_AUTOSTART", "1")
    ids = [jobs.submit({**SPEC, "experiment": "shoes"}, store) for _ in range(4)]
    jobs.cancel(ids[0], store)
    store.update(ids[1], state="running", started=time.time() - 5)   # oldest live one, yet listed first
    store.add_event(ids[1], {"phase": "measure"})
    at = jobs_page(home, monkeypatch, ids)

    table = at.dataframe[0].value
    assert list(table["id"]) == [ids[1], ids[3], ids[2]]          # running, then queued newest first
    assert list(table["activity"])[:2] == ["measuring", "queued"]
    assert "1 cancelled hidden" in "\n".join(str(c.value) for c in at.caption)
    assert "1/4 jobs ended" in at.get("progress")[0].proto.text     # the launched plan's line
    assert "Experiment **shoes**: 1/4 jobs ended; no estimate yet" in "\n".join(str(c.value) for c in at.caption)
    at.toggle(key="jobs_hide_cancelled").set_value(False).run()
    assert ids[0] in list(at.dataframe[0].value["id"])
    at.toggle(key="jobs_hide_cancelled").set_value(True).run()

    # tick the two queued rows and cancel them; the running one is left alone
    key = f"jobs_table~{at.session_state['jobs_table_n']}"     # toggling emptied the selection: a new key
    at.session_state[key] = {"selection": {"rows": [1, 2], "columns": [], "cells": []}}
    at.run()
    assert at.button(key="bulk_cancel").label == "Cancel selected (2)"
    assert at.button(key="bulk_retry").disabled
    at.button(key="bulk_cancel").click().run()
    assert [store.get(j)["state"] for j in ids] == ["cancelled", "running", "cancelled", "cancelled"]
    assert "Cancel requested for 2 job" in "\n".join(str(t.value) for t in at.toast)
    assert list(at.dataframe[0].value["id"]) == [ids[1]]

    # every cancelled job of the experiment at once
    assert at.button(key="bulk_retry_experiment").label == "Retry all (3)"
    at.button(key="bulk_retry_experiment").click().run()
    assert [store.get(j)["state"] for j in ids] == ["queued", "running", "queued", "queued"]
    jobs.cancel_many(ids, store)


def test_a_finished_plan_is_announced_once_with_a_toast_on_whichever_page_is_open(home, monkeypatch):
    store = Store(home)
    spec = check_spec(SPEC).to_dict()
    ids = [_done(store, {**spec, "experiment": "shoes"}, 30) for _ in range(2)]
    monkeypatch.setenv("SLIMBENCH_HOME", str(home))
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120)
    at.session_state["launched"] = ids
    at.run()                                                  # Experiments: the sidebar announces it
    assert not at.exception, [e.value for e in at.exception]
    assert [str(t.value) for t in at.toast] == ["Plan **shoes** finished: 2 done"]
    notice = "\n".join(f.proto.srcdoc for f in at.get("iframe"))     # the browser notification, shown if allowed
    assert "new N(\"Slimbench: plan shoes finished\", {body: \"2 done\"" in notice
    assert at.session_state["plan_announced"] == ",".join(ids)
    at.switch_page("views/jobs.py")
    at.run()
    assert not at.toast                                       # once per plan, not on every rerun
    assert "all 2 jobs ended: 2 done" in at.get("progress")[0].proto.text


def test_a_custom_experiment_says_how_long_it_takes_here_before_launch(home, monkeypatch):
    monkeypatch.setenv("SLIMBENCH_HOME", str(home))
    monkeypatch.setenv("SLIMBENCH_NO_AUTOSTART", "1")
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120)
    at.run()
    at.radio(key="data_source").set_value("Built-in")
    at.selectbox(key="dataset").set_value("digits")
    at.run()

    def said() -> str:
        return next(str(c.value) for c in at.caption if str(c.value).startswith("How long on this machine"))
    assert "no estimate from history" in said()
    assert any(e.proto.label == "Launch queues **1 job**" for e in at.expander)    # not "1 job(s)"
    at.button(key="launch_custom").click().run()               # the same job, run here once: 40 s
    assert any(str(s.value).startswith("Queued 1 job: ") for s in at.success)
    store = Store(home)
    (job,) = [r["id"] for r in store.list()]
    store.update(job, state="done", started=time.time() - 40, finished=time.time(), host=procs.host())
    at.run()
    assert said() == "How long on this machine: About 40 s, from 1 finished run on this machine."
