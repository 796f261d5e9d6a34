"""In Chromium: transfer learning from a local ImageNet state dict, set up on Experiments and run to the
end (issue 25, item 4); the Custom-experiment tab stays open after Launch (item 6); its readable model
card says where the weights came from (item 5). A .pt2 loaded in plain torch: tests/test_browser_walk.py."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch

from bench.pages import CHROMIUM, streamlit_server
from engine import layout
from engine.export import load_model
from engine.store import Store
from test_browser import SHOTS, fill_number, shot
from test_transfer_ui import imagenet_weights, tiny_folder

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")]
JOB_TIMEOUT_S = 420


def test_transfer_learning_from_experiments_then_its_card(tmp_path, page):
    folder = tiny_folder(tmp_path / "imgs")
    weights = imagenet_weights(tmp_path / "resnet18-imagenet.pth")
    home = tmp_path / "ws"
    SHOTS.mkdir(exist_ok=True)
    with streamlit_server(home, env={"SLIMBENCH_WORKER_IDLE_EXIT": "20"}) as (url, _):
        page.set_viewport_size({"width": 1400, "height": 1000})
        page.goto(url)
        page.get_by_role("heading", name="Experiments").wait_for(timeout=60_000)
        page.get_by_role("tab", name="Custom experiment").click(timeout=60_000)
        page.get_by_text("Path on this server", exact=True).first.click()
        field = page.get_by_label("Folder or zip on this server", exact=True)
        field.fill(str(folder))
        field.press("Enter")
        page.get_by_text(re.compile(r"About 22 training images per class")).wait_for(timeout=60_000)
        fill_number(page, "Baseline epochs", 1)
        fill_number(page, "Latency runs", 5)
        page.get_by_text("Export + verify ONNX").click()
        page.get_by_text("ImageNet state dict (transfer learning)").click()
        path = page.get_by_label("File on this server", exact=True)
        path.fill(str(weights))
        path.press("Enter")
        page.get_by_text(re.compile(r"tensors of resnet18 come from ImageNet")).wait_for(timeout=60_000)
        assert page.get_by_text(re.compile(r"training images per class")).count() == 0   # the advice was taken
        shot(page, "experiments-transfer")
        page.get_by_role("button", name="Launch", exact=True).click()
        page.get_by_text(re.compile(r"Queued 1 job")).wait_for(timeout=60_000)
        tab = page.get_by_role("tab", name="Custom experiment")
        assert tab.get_attribute("aria-selected") == "true"                       # not back on Presets

        store = Store(home)
        deadline = time.time() + JOB_TIMEOUT_S
        while not (rows := store.list(("done", "failed", "cancelled"))) and time.time() < deadline:
            time.sleep(2)
        assert rows and rows[0]["state"] == "done", rows and rows[0].get("error")
        run_id = rows[0]["id"]
        model, _ = load_model(store.run_dir(run_id) / layout.CHECKPOINT)
        imagenet = torch.load(weights, weights_only=True)
        assert torch.equal(model.state_dict()["layer2.0.conv1.weight"], imagenet["layer2.0.conv1.weight"])  # frozen
        assert model.fc.out_features == 3 and imagenet["fc.weight"].shape[0] == 1000                   # a new head

        page.goto(f"{url}/compare?run={run_id}")
        page.get_by_role("heading", name="Run details").wait_for(timeout=60_000)
        page.get_by_text("Read the model card").click(timeout=120_000)   # after the .pt2 is made (a loaded machine: s)
        page.get_by_role("heading", name=re.compile("Model card: baseline resnet18 from ImageNet weights")).wait_for()
        page.get_by_text(re.compile(r"Wilson interval over \d+ test images")).first.wait_for()
        page.get_by_text(re.compile(r"from the ImageNet weights in .*backbone frozen")).first.wait_for()
        shot(page, "compare-model-card")
