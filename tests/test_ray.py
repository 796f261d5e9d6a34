"""The Ray backend for real: a local Ray cluster on 127.0.0.1, a worker with SLIMBENCH_BACKEND=ray
connected to it through RAY_ADDRESS, two small jobs run as Ray tasks into the shared workspace."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import jobs
from engine.store import Store

from conftest import ROOT

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -r requirements-ray.txt)")
# Under xdist, one worker runs every test that starts a local Ray head (its ports and /tmp/ray session files).
pytestmark = pytest.mark.xdist_group("ray")

MEASURE = {"onnx": False, "latency_runs": 5, "warmup_runs": 1}
JOB = {"data": {"name": "digits", "limit": 100, "test_limit": 50}, "model": {"arch": "resnet18"},
       "method": {"name": "baseline"}, "train": {"epochs": 1, "device": "cpu"}, "measure": MEASURE}


@pytest.fixture()
def ray_cluster():
    """A local head (2 CPUs, no dashboard) owned by this test process: ray.shutdown() stops it."""
    ctx = ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=80 * 1024**2,
                   configure_logging=False, log_to_driver=False)
    try:
        yield ctx.address_info["gcs_address"]
    finally:
        ray.shutdown()


def test_two_jobs_run_as_ray_tasks_into_the_workspace(ray_cluster, tmp_path, monkeypatch):
    home = tmp_path / "ws"
    for k, v in {"SLIMBENCH_HOME": str(home), "SLIMBENCH_NO_AUTOSTART": "1", "SLIMBENCH_HEARTBEAT_S": "0.5"}.items():
        monkeypatch.setenv(k, v)
    store = Store(home)
    ids = jobs.submit_many([{**JOB, "name": "ray-a"}, {**JOB, "name": "ray-b", "data": {**JOB["data"], "seed": 1}}],
                           store)

    env = {**os.environ, "SLIMBENCH_BACKEND": "ray", "RAY_ADDRESS": ray_cluster}
    err = open(home / "worker.err", "w")
    worker = subprocess.Popen([sys.executable, "-m", "engine", "worker", "--exit-when-idle", "30"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            rows = [store.get(i) for i in ids]
            if all(r["state"] not in ("queued", "running") for r in rows):
                break
            assert worker.poll() is None, f"worker exited:\n{(home / 'worker.err').read_text()[-3000:]}"
            time.sleep(0.5)
        status = jobs.worker_status(store)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        err.close()

    assert status["backend"] == "ray" and status["concurrency"] == 2  # the cluster's 2 CPUs, not this machine's
    for job_id, row in zip(ids, rows):
        assert row["state"] == "done", f"{job_id}: {row['state']} {row['error']}\n{jobs.job_log(job_id, store)}"
        events = store.events(job_id)
        scheduled = [e for e in events if e["phase"] == "scheduled"]
        # Scheduled through Ray with a CPU request, and the job's own progress flowed back into the store.
        assert scheduled and scheduled[0]["backend"] == "ray" and scheduled[0]["num_cpus"] == 1
        assert scheduled[0]["num_gpus"] == 0 and len(scheduled[0]["task_id"]) > 8
        assert any(e["phase"] == "train" and e.get("step") for e in events)
        rec = row["record"]
        assert rec["run_id"] == job_id and 0.0 <= rec["accuracy"] <= 1.0 and rec["test_images"] == 50
        # Artifacts landed in the workspace, not in a Ray worker's scratch dir.
        assert Path(rec["checkpoint"]) == home / "runs" / job_id / "model.pt"
        assert Path(rec["checkpoint"]).is_file() and (home / "runs" / job_id / "result.json").is_file()
        # It ran in a Ray worker process, not one the slimbench worker started itself.
        assert row["pid"] and row["pid"] != worker.pid
    assert {store.get(i)["name"] for i in ids} == {"ray-a", "ray-b"}


def test_resource_request_follows_the_spec():
    from engine.backends.ray import resources_for
    assert resources_for({"train": {"device": "cuda", "devices": 2}}) == {"num_cpus": 1, "num_gpus": 2}
    assert resources_for({"train": {"device": "cuda:0"}}) == {"num_cpus": 1, "num_gpus": 1}
    assert resources_for({"train": {"device": "cpu", "devices": 2}}) == {"num_cpus": 2, "num_gpus": 0}
