"""In headless Chromium, issue 22's model-in flows: an ONNX model, and a Python model file (refused until
its code is trusted), uploaded on Experiments, are launched, run by a worker, and show up on Compare."""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bench.pages import CHROMIUM, streamlit_server
from engine.store import Store
from views.common import fmt_ms

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")]
SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts"
JOB_TIMEOUT_S = 180


def onnx_bytes(tmp_path: Path) -> bytes:
    """A small convolutional net for digits' 3x8x8 images, exported as a user would (dynamic batch)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 10)).eval()
    path = tmp_path / "mine.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 8, 8),), str(path), dynamo=False, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17)
    return path.read_bytes()


def stop_workers(home: Path) -> None:
    """End the worker the server started for the launched job (by its recorded pid)."""
    with Store(home).connect() as db:
        pids = [r[0] for r in db.execute("SELECT pid FROM workers WHERE pid IS NOT NULL").fetchall()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass


def custom_experiment(page, url: str) -> None:
    """Experiments' Custom experiment on digits: 100 test images, 3 latency runs."""
    page.goto(url)
    page.get_by_role("heading", name="Experiments").wait_for(timeout=60_000)
    page.get_by_role("tab", name="Custom experiment").click()
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text="Dataset").first
    box.click()
    box.locator("input").fill("digits")
    page.get_by_role("option", name="digits", exact=True).first.click(timeout=60_000)
    for label, value in (("Test images (0 = all)", 100), ("Latency runs", 3)):
        fill(page, label, value)


def fill(page, label: str, value) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")


def finished(store: Store) -> dict:
    """The one job's record once a worker has run it (a failure's error is the assertion's message)."""
    deadline = time.time() + JOB_TIMEOUT_S
    while not store.list("done"):
        failed = store.list("failed")
        assert not failed, failed[0].get("error")
        assert time.time() < deadline, "the job did not finish"
        time.sleep(0.5)
    run = store.list("done")[0]
    return {**store.get(run["id"])["record"], "run_id": run["id"]}


def test_an_uploaded_onnx_model_is_launched_and_shows_up_measured_on_compare(tmp_path, page):
    home = tmp_path / "ws"
    store = Store(home)
    SHOTS.mkdir(exist_ok=True)
    page.set_viewport_size({"width": 1400, "height": 1000})
    with streamlit_server(home, env={"SLIMBENCH_WORKER_IDLE_EXIT": "5"},
                          log=SHOTS / "streamlit-model-in.log") as (url, _):
        try:
            custom_experiment(page, url)
            page.get_by_text("Upload a checkpoint", exact=True).click()
            uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="Checkpoint")
            uploader.locator('input[type="file"]').set_input_files(files=[{
                "name": "mine.onnx", "mimeType": "application/octet-stream", "buffer": onnx_bytes(tmp_path)}])
            # Its inputs are read from the graph; methods needing PyTorch weights are named as unavailable.
            page.get_by_text(re.compile(r"ONNX model, input 'image': 3 x 8x8, dynamic batch")).first.wait_for(timeout=60_000)
            page.get_by_text(re.compile(r"On an ONNX model: .*quantize_int8.*Not available: .*prune_structured")
                             ).first.wait_for()
            page.get_by_text("Export + verify ONNX").click()  # deployment runtimes are not the point here
            page.wait_for_timeout(500)
            page.screenshot(path=str(SHOTS / "page-experiments-onnx-model.png"), full_page=True)
            page.get_by_role("button", name="Launch", exact=True).click()
            page.get_by_text(re.compile(r"Queued 1 job")).wait_for(timeout=60_000)

            record = finished(store)
            assert record["arch"] == "mine.onnx" and record["latency_ms"] > 0 and record["macs"] > 0

            page.goto(f"{url}/compare?run={record['run_id']}")
            page.get_by_role("heading", name="Run details").wait_for(timeout=60_000)
            page.locator(".js-plotly-plot").first.get_by_text("baseline, mine.onnx").wait_for()  # on the plot
            page.get_by_text(f"{record['accuracy']:.4f}", exact=True).first.wait_for(timeout=30_000)
            page.get_by_text(fmt_ms(record["latency_ms"]), exact=True).first.wait_for(timeout=30_000)  # its tile
            page.screenshot(path=str(SHOTS / "page-compare-onnx-model.png"), full_page=True)
        finally:
            stop_workers(home)


def test_a_python_model_file_is_refused_until_its_code_is_trusted_then_runs_and_shows_on_compare(tmp_path, page):
    from tests.test_user_models import NET
    home = tmp_path / "ws"
    store = Store(home)
    SHOTS.mkdir(exist_ok=True)
    page.set_viewport_size({"width": 1400, "height": 1000})
    with streamlit_server(home, env={"SLIMBENCH_WORKER_IDLE_EXIT": "5"},
                          log=SHOTS / "streamlit-model-file.log") as (url, _):
        try:
            custom_experiment(page, url)
            page.get_by_text("Your own architecture", exact=True).click()
            uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="A Python file with a builder")
            uploader.locator('input[type="file"]').set_input_files(files=[{
                "name": "tiny_resnet.py", "mimeType": "text/x-python", "buffer": NET.encode()}])
            page.get_by_text(re.compile(r"building the model runs this file's code on this server")).wait_for(
                timeout=60_000)  # the plain warning, before anything can run
            fill(page, "Builder keyword arguments (JSON)", '{"width": 8}')
            fill(page, "Baseline epochs (trained from scratch)", 4)
            page.get_by_text("Export + verify ONNX").click()
            page.wait_for_timeout(500)
            page.get_by_role("button", name="Launch", exact=True).click()
            page.get_by_text(re.compile(r"Cannot launch: tick .Run this Python file's code. to build the model "
                                        r"from tiny_resnet\.py")).wait_for(timeout=30_000)
            page.screenshot(path=str(SHOTS / "page-experiments-model-file-refused.png"), full_page=True)
            assert store.list() == []  # refused: nothing queued, nothing ran

            page.get_by_text("Run this Python file's code", exact=True).click()
            page.wait_for_timeout(500)
            page.get_by_role("button", name="Launch", exact=True).click()
            page.get_by_text(re.compile(r"Queued 1 job")).wait_for(timeout=60_000)
            record = finished(store)
            assert record["arch"] == "tiny_resnet.py:build" and record["accuracy"] > 0.3, record["accuracy"]

            page.goto(f"{url}/compare?run={record['run_id']}")
            page.get_by_role("heading", name="Run details").wait_for(timeout=60_000)
            page.locator(".js-plotly-plot").first.get_by_text("baseline, tiny_resnet.py:build").wait_for()  # the legend
            page.get_by_text(f"{record['accuracy']:.4f}", exact=True).first.wait_for(timeout=30_000)
            page.screenshot(path=str(SHOTS / "page-compare-model-file.png"), full_page=True)
        finally:
            stop_workers(home)
