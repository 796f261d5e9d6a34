"""Experiments have names and groups (issue 25, item 1): set at launch (spec, CLI, Experiments page),
shown and filtered by `engine jobs` / `engine runs` and Compare."""
from __future__ import annotations

import json

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from conftest import ROOT, cli_here
from engine import jobs
from engine.errors import SpecError
from engine.spec import MAX_NAME_CHARS, JobSpec
from engine.store import Store

SPEC = {"data": {"name": "digits"}, "model": {"arch": "resnet18"}, "train": {"device": "cpu"}}


@pytest.mark.fast
def test_a_spec_carries_its_experiment_and_group_and_refuses_bad_ones():
    spec = JobSpec.from_dict({**SPEC, "experiment": "shoes", "group": "pruning sweep"})
    assert (spec.experiment, spec.group) == ("shoes", "pruning sweep")
    assert JobSpec.from_json(spec.to_json()) == spec
    assert JobSpec.from_dict(SPEC).experiment is None
    with pytest.raises(SpecError, match="^group: must be str"):
        JobSpec.from_dict({**SPEC, "group": ["a"]})
    with pytest.raises(SpecError, match=f"^experiment: must be at most {MAX_NAME_CHARS} characters"):
        JobSpec.from_dict({**SPEC, "experiment": "x" * (MAX_NAME_CHARS + 1)})


@pytest.mark.fast
def test_cli_submit_labels_jobs_and_jobs_and_runs_filter_by_them(home, tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({**SPEC, "experiment": "from the file"}))
    ids = {}
    for exp, group in (("shoes", "prune"), ("shoes", "distil"), (None, None)):
        extra = [*(["--experiment", exp] if exp else []), *(["--group", group] if group else [])]
        p = cli_here("submit", str(path), "--no-worker", *extra, home=home)
        assert p.returncode == 0, p.stderr
        ids[(exp, group)] = p.stdout.strip()
    store = Store(home)
    assert store.get(ids[("shoes", "prune")])["spec"]["group"] == "prune"
    assert store.get(ids[(None, None)])["spec"]["experiment"] == "from the file"   # the spec's own, kept

    listed = json.loads(cli_here("jobs", "--json", "--experiment", "shoes", home=home).stdout)
    assert {r["id"] for r in listed} == {ids[("shoes", "prune")], ids[("shoes", "distil")]}
    assert {(r["experiment"], r["group"]) for r in listed} == {("shoes", "prune"), ("shoes", "distil")}
    text = cli_here("jobs", "--group", "distil", home=home).stdout
    assert ids[("shoes", "distil")] in text and "shoes / distil" in text and ids[("shoes", "prune")] not in text
    runs = cli_here("runs", "--state", "queued", "--experiment", "from the file", "--json", home=home)
    assert [r["id"] for r in json.loads(runs.stdout)] == [ids[(None, None)]]
    p = cli_here("submit", str(path), "--no-worker", "--group", "g" * (MAX_NAME_CHARS + 1), home=home)
    assert p.returncode == 2 and "group" in p.stderr
    for job in ids.values():
        jobs.cancel(job, store)


def test_experiments_page_labels_every_launched_job_and_compare_filters_by_them(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMBENCH_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("SLIMBENCH_NO_AUTOSTART", "1")
    st.cache_resource.clear()
    st.cache_data.clear()
    store = Store(tmp_path / "ws")
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120)
    at.run()
    at.text_input(key="exp_experiment").set_value("  quick   look ")
    at.text_input(key="exp_group").set_value("tour")
    at.selectbox(key="preset").set_value("Quick tour (CPU)")
    at.run()
    at.button(key="launch_preset").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    launched = at.session_state["launched"]
    assert launched and all((store.get(j)["spec"]["experiment"], store.get(j)["spec"]["group"])
                            == ("quick look", "tour") for j in launched)
    for j in launched:
        jobs.cancel(j, store)

    # Compare: finished runs of two experiments, filtered to one
    for i, exp in enumerate(("quick look", "other")):
        rid = f"run-{i}"
        store.create({**SPEC, "experiment": exp}, state="done", run_id=rid, created=1.0 + i)
        store.update(rid, record={"run_id": rid, "name": rid, "experiment": exp, "group": "tour", "method": "baseline",
                                  "arch": "resnet18", "dataset": "digits", "accuracy": 0.9, "size_bytes": 1000,
                                  "finished": 1.0 + i}, finished=1.0 + i)
    st.cache_data.clear()
    at.switch_page("views/compare.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert set(at.dataframe[0].value["experiment"]) == {"quick look", "other"}
    at.multiselect(key="f_experiment").set_value(["other"])
    at.run()
    assert list(at.dataframe[0].value["run_id"]) == ["run-1"]
