"""MLflow tracking: a finished run (and its pipeline's steps, nested) logged to a file store and read
back with MLflow's own client; the CLI export; a store that cannot be reached leaves the run finished."""
from __future__ import annotations

import json

import pytest

from engine import layout, tracking
from engine.spec import JobSpec
from engine.store import Store

from conftest import cli


def finished(store: Store, spec: dict, record: dict, parent: str | None = None) -> str:
    """A finished run row with its result files, as the runner leaves one (no training needed)."""
    run_id = store.create(JobSpec.from_dict(spec).to_dict(), state="running", parent=parent)
    d = store.run_dir(run_id)
    d.mkdir(parents=True, exist_ok=True)
    for name in (layout.CHECKPOINT, layout.ONNX):
        (d / name).write_bytes(f"{name} of {run_id}".encode())
    (d / layout.CARD).write_text(json.dumps({"accuracy": record["accuracy"]}))
    store.update(run_id, state="done", record={"run_id": run_id, **record}, finished=record["finished"])
    return run_id


@pytest.fixture()
def pipeline_runs(home):
    store = Store(home)
    base = {"data": {"name": "digits"}, "model": {"arch": "resnet20"}, "experiment": "my study"}
    top = finished(store, {**base, "name": "prune then int8", "method": {"name": "pipeline", "params": {"steps": [
        {"name": "prune_structured", "params": {"ratio": 0.5}}, {"name": "quantize_int8"}]}}},
        {"method": "pipeline", "arch": "resnet20", "accuracy": 0.9, "accuracy_ci95": [0.88, 0.92],
         "chance_level": False, "macs": 20_000_000, "started": 1.7e9, "finished": 1.7e9 + 60})
    steps = [finished(store, {**base, "method": {"name": m}}, {"method": m, "arch": "resnet20", "accuracy": acc,
                                                             "finished": 1.7e9 + 30}, parent=top)
             for m, acc in (("prune_structured", 0.91), ("quantize_int8", 0.9))]
    return store, top, steps


@pytest.mark.fast
def test_a_search_is_logged_with_its_trials_nested(home, tmp_path):
    """An auto-compress search's trials are its child runs in MLflow too (the issue: nested runs for pipelines
    and searches), while the run it started from stays out of it."""
    from mlflow.tracking import MlflowClient

    from test_search_page import insert_study
    made = insert_study(home)
    uri = (tmp_path / "mlruns").as_uri()
    mid = tracking.log_run(Store(home), made["search"], uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_run(mid).info.experiment_id
    nested = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{mid}'")
    assert sorted(r.data.tags[tracking.TAG] for r in nested) == sorted(made["trials"])
    assert client.get_run(mid).data.params["method.name"] == "autocompress"
    logged = {r.data.tags[tracking.TAG] for r in client.search_runs([exp])}
    assert made["base"] not in logged and made["hand"] not in logged


@pytest.mark.fast
def test_a_pipeline_is_logged_with_its_steps_nested_and_reads_back(pipeline_runs, tmp_path):
    from mlflow.tracking import MlflowClient
    store, top, steps = pipeline_runs
    uri = (tmp_path / "mlruns").as_uri()
    mid = tracking.log_run(store, top, uri)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(mid)
    assert client.get_experiment(run.info.experiment_id).name == "my study"
    assert run.info.run_name == "prune then int8" and run.info.status == "FINISHED"
    assert run.data.params["method.name"] == "pipeline" and run.data.params["data.name"] == "digits"
    assert json.loads(run.data.params["method.params.steps"])[0]["params"]["ratio"] == 0.5
    assert run.data.metrics["accuracy"] == 0.9 and run.data.metrics["macs"] == 20_000_000
    assert (run.data.metrics["accuracy_ci95_low"], run.data.metrics["accuracy_ci95_high"]) == (0.88, 0.92)
    assert run.data.metrics["chance_level"] == 0.0 and run.data.tags[tracking.TAG] == top
    logged = {f.path for f in client.list_artifacts(mid)}
    assert {"model.pt", "model.onnx", "card.json"} <= logged
    got = client.download_artifacts(mid, "model.pt", str(tmp_path))
    assert open(got, "rb").read() == f"model.pt of {top}".encode()
    children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{mid}'")
    assert sorted(c.data.tags[tracking.TAG] for c in children) == sorted(steps)
    assert {c.data.params["method.name"] for c in children} == {"prune_structured", "quantize_int8"}
    assert tracking.status(store.run_dir(top)) == {"uri": uri, "mlflow_run_id": mid,
                                                   "at": pytest.approx(tracking.status(store.run_dir(top))["at"])}
    # Logged again (an export of past runs): the same MLflow run, nothing duplicated.
    assert tracking.log_run(store, top, uri) == mid
    assert len(client.search_runs([run.info.experiment_id])) == 3


@pytest.mark.fast
def test_the_cli_exports_past_runs_and_says_which_it_could_not(pipeline_runs, home, tmp_path):
    store, top, steps = pipeline_runs
    uri = (tmp_path / "exported").as_uri()
    p = cli("mlflow", "--uri", uri, home=home)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"{top} -> ") and "1 of 1 run(s) logged" in p.stderr  # steps go nested, not alone
    p = cli("mlflow", "20990101-000000-abcdef", steps[0], "--uri", uri, home=home)
    assert p.returncode == 2 and "not a finished run" in p.stderr  # checked before anything is logged
    # A store that cannot be reached: the error is raised to the caller and kept beside the run.
    with pytest.raises(Exception):
        tracking.log_run(store, steps[0], "http://127.0.0.1:9")
    status = tracking.status(store.run_dir(steps[0]))
    assert status["uri"] == "http://127.0.0.1:9" and "Max retries" in status["error"]


def test_an_unreachable_tracking_store_leaves_the_run_finished_and_says_why(session_home, monkeypatch, capsys):
    from engine.runner import run_spec  # in this process: the job is seconds, a CLI process's imports more
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a user's own setting wins over the engine's 1
    # The smallest run that finishes: what is tested is what happens after it, not the run.
    rec = run_spec({"data": {"name": "digits", "limit": 16, "test_limit": 16, "val_fraction": 0.02},
                    "model": {"arch": "resnet20"}, "method": {"name": "baseline"},
                    "train": {"epochs": 1}, "track": {"mlflow": True},
                    "measure": {"onnx": False, "deploy": False, "paired_rounds": 0, "latency_runs": 2,
                                "warmup_runs": 1}}, Store(session_home))
    assert Store(session_home).get(rec["run_id"])["state"] == "done"
    assert "finished but was not logged to MLflow at http://127.0.0.1:9" in capsys.readouterr().err
    status = tracking.status(Store(session_home).run_dir(rec["run_id"]))
    assert status["uri"] == "http://127.0.0.1:9" and "mlflow_run_id" not in status
    assert "Connection" in status["error"] or "connect" in status["error"].lower()
    log = (Store(session_home).run_dir(rec["run_id"]) / layout.LOG).read_text()
    assert "not logged to MLflow at http://127.0.0.1:9" in log
