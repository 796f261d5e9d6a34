"""MLflow tracking: a finished run, logged to an MLflow tracking store.

A run becomes one MLflow run in the experiment named as the spec's ``experiment`` (else "slimbench"):
its spec as params (``data.name``, ``method.params.ratio``, ...), every number of its result record as a
metric, its ``model.pt`` bundle, ``model.onnx``, ``card.json``, ``result.json`` and ``spec.json`` as
artefacts, and the runs it made (pipeline steps, searches) as nested runs under it. The store is
MLflow's own ``MLFLOW_TRACKING_URI`` (any URI MLflow takes), else ``./mlruns`` in the current folder:
nothing is sent anywhere the user did not configure. A run already logged to that store (tag
``slimbench.run_id``) is not logged twice, so exporting past runs again is harmless.

Where each run went, or why it could not be logged, is kept in its folder (``mlflow.json``), for
Compare and the CLI to show: a tracking store that is down never fails the run itself.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from . import layout, settings
from .store import Store

TAG = "slimbench.run_id"
DEFAULT_EXPERIMENT = "slimbench"
ARTEFACTS = (layout.CHECKPOINT, layout.ONNX, layout.CARD, layout.RESULT, layout.SPEC)
PARAM_CHUNK = 100       # MLflow takes at most 100 params per batch ...
METRIC_CHUNK = 1000     # ... and 1000 metrics
PARAM_VALUE_MAX = 6000  # characters of one param value (MLflow's limit)
# A store that cannot be reached must not hold a finished run for minutes: MLflow's HTTP client
# retries 7 times with exponential backoff by default. A user's own setting of these wins.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 # MLflow 3 keeps its folder store ("./mlruns") in maintenance mode behind this switch; its
                 # database stores need SQLAlchemy, which mlflow-skinny leaves out. A sqlite:/// or http(s)://
                 # URI works as well where the full mlflow package (or a server) is there.
                 "MLFLOW_ALLOW_FILE_STORE": "true"}


def tracking_uri(uri: str | None = None) -> str:
    """The store runs are logged to: ``uri``, else ``MLFLOW_TRACKING_URI``, else ``./mlruns`` (as a file URI)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri if uri else Path("mlruns").resolve().as_uri()


def wanted(spec_track_mlflow: bool) -> bool:
    """Whether a finished run is logged: its spec asks (``track.mlflow``), or SLIMBENCH_MLFLOW=1."""
    return bool(spec_track_mlflow) or settings.mlflow_always()


def flat_params(spec: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The spec as MLflow params: nested keys joined by dots, unset values left out."""
    out: dict[str, str] = {}
    for k, v in spec.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_params(v, key + "."))
        elif v is not None:
            text = v if isinstance(v, str) else json.dumps(v)
            out[key] = text[:PARAM_VALUE_MAX]
    return out


def metrics_of(record: dict[str, Any]) -> dict[str, float]:
    """Every finite number of the record (booleans as 0/1); a two-number interval as ``_low``/``_high``."""
    out: dict[str, float] = {}
    for k, v in record.items():
        if isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, (int, float)) and math.isfinite(v):
            out[k] = float(v)
        elif (isinstance(v, (list, tuple)) and len(v) == 2 and k.endswith("ci95")
              and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
            out[f"{k}_low"], out[f"{k}_high"] = float(v[0]), float(v[1])
    return out


def status(run_dir: Path) -> dict[str, Any] | None:
    """Where the run was logged (``uri``, ``mlflow_run_id``) or why not (``error``); None if never tried."""
    try:
        return json.loads((Path(run_dir) / layout.MLFLOW).read_text())
    except (OSError, ValueError):
        return None


def log_run(store: Store, run_id: str, uri: str | None = None) -> str:
    """Log finished run ``run_id`` and its child runs (nested) to MLflow; returns its MLflow run id.
    Raises what MLflow raises (an unreachable store, a refused write); records either outcome."""
    uri = tracking_uri(uri)
    run_dir = store.run_dir(run_id)
    try:
        mlflow_id = _log(_client(uri), store, run_id, None)
    except Exception as e:
        _write_status(run_dir, {"uri": uri, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                                if str(e) else type(e).__name__, "at": time.time()})
        raise
    _write_status(run_dir, {"uri": uri, "mlflow_run_id": mlflow_id, "at": time.time()})
    return mlflow_id


def _client(uri: str):
    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)
    from mlflow.tracking import MlflowClient  # heavy: only a run that is logged pays for it
    return MlflowClient(tracking_uri=uri)


def _log(client, store: Store, run_id: str, parent: str | None) -> str:
    from mlflow.entities import Metric, Param, RunTag

    row = store.get(run_id)
    if row is None or row["state"] != "done" or not row.get("record"):
        raise ValueError(f"run {run_id} is not a finished run in this workspace")
    spec, record = row.get("spec") or {}, row["record"]
    name = spec.get("experiment") or DEFAULT_EXPERIMENT
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
    done = client.search_runs([exp_id], filter_string=f"tags.`{TAG}` = '{run_id}'", max_results=1)
    if done:
        return done[0].info.run_id
    tags = {TAG: run_id, "slimbench.method": str(record.get("method")), "slimbench.arch": str(record.get("arch"))}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp_id, run_name=spec.get("name") or record.get("name") or run_id, tags=tags,
                            start_time=int(1000 * (record.get("started") or time.time())))
    mid = run.info.run_id
    ts = int(1000 * (record.get("finished") or time.time()))
    params = [Param(k, v) for k, v in flat_params(spec).items()]
    metrics = [Metric(k, v, ts, 0) for k, v in metrics_of(record).items()]
    for i in range(0, len(params), PARAM_CHUNK):
        client.log_batch(mid, params=params[i:i + PARAM_CHUNK])
    for i in range(0, len(metrics), METRIC_CHUNK):
        client.log_batch(mid, metrics=metrics[i:i + METRIC_CHUNK])
    client.log_batch(mid, tags=[RunTag("slimbench.workspace", str(store.root))])
    run_dir = store.run_dir(run_id)
    for f in ARTEFACTS:
        if (run_dir / f).is_file():
            client.log_artifact(mid, str(run_dir / f))
    for child in store.children(run_id):  # oldest first: a pipeline's steps in order
        if child["state"] == "done" and child.get("record"):
            _log(client, store, child["id"], mid)
    client.set_terminated(mid, "FINISHED", end_time=ts)
    return mid


def _write_status(run_dir: Path, status: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{layout.MLFLOW}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(status))
    tmp.replace(run_dir / layout.MLFLOW)
