"""The first hour (issue 25, "Done when"), walked in headless Chromium: launch a named preset, which says
how long it takes here; watch the plan's overall ETA and a job's phase on Jobs; opt in to a browser
notification and get it, with a toast, when the plan ends; filter Compare by the experiment; see the
untrained run flagged at chance level and kept out of the winner unless asked; download the winner's
.pt2 and load it in a fresh Python that imports only torch; open its readable model card.

The preset is tests/first_hour.py (two tiny digits jobs), served by tests/first_hour_serve.py. The
server starts no worker (SLIMBENCH_NO_AUTOSTART) so that the plan waits while the test shows a phase;
then the test starts the worker that runs it. Screenshots: test-artifacts/first-hour-*.png."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from playwright.sync_api import expect

import first_hour
from bench.pages import CHROMIUM, streamlit_server
from engine import layout, presets, procs
from engine.export import load_model
from engine.store import Store
from engine.validation import check_spec
from test_browser import ROOT, SHOTS, download, goto, pick, settle

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")]
JOB_TIMEOUT_MS = 300_000

# The Notification API as a page sees it, recording what it is asked to show (headless Chromium has no
# notification centre to look at). Permission starts undecided, as in a fresh browser.
FAKE_NOTIFICATIONS = """
if (window === window.top) {
  window.__notes = [];
  class FakeNotification { constructor(title, opts) { window.__notes.push([title, (opts || {}).body]); } }
  FakeNotification.permission = "default";
  FakeNotification.requestPermission = () => { FakeNotification.permission = "granted"; return Promise.resolve("granted"); };
  window.Notification = FakeNotification;
}
"""

# A fresh Python that imports torch and nothing of Slimbench: the program and the input size it carries.
PLAIN_TORCH = """
import json, sys
import torch
extra = {"slimbench.json": ""}
model = torch.export.load(sys.argv[1], extra_files=extra).module()
size = json.loads(extra["slimbench.json"])["input_size"]
x = torch.load(sys.argv[2])
print(json.dumps({"size": size, "top1": model(x).argmax(1).tolist(), "engine": "engine" in sys.modules}))
"""


def shot(page, name: str) -> None:
    page.wait_for_timeout(800)  # let charts finish drawing
    page.screenshot(path=str(SHOTS / f"first-hour-{name}.png"), full_page=True)


def seed_history(store: Store) -> None:
    """This machine ran the preset's jobs before (40 s each), in another experiment: the estimate's basis."""
    ok, _ = presets.check(first_hour.plan())
    t0 = time.time() - 50_000
    for s in ok:
        spec = check_spec({**presets.resolve([s], presets.ref(0))[0], "experiment": "last week"}).to_dict()
        run = store.create(spec, state="done")
        store.update(run, started=t0, finished=t0 + 40, host=procs.host())


def test_the_first_hour(tmp_path, page):
    home = tmp_path / "ws"
    store = Store(home)
    seed_history(store)
    SHOTS.mkdir(exist_ok=True)
    page.add_init_script(FAKE_NOTIFICATIONS)
    page.set_viewport_size({"width": 1400, "height": 1000})
    worker = None
    with streamlit_server(home, env={"SLIMBENCH_NO_AUTOSTART": "1"}, log=SHOTS / "streamlit-first-hour.log",
                          script=ROOT / "tests" / "first_hour_serve.py") as (url, _):
        try:
            # -- Experiments: a named preset that says what it uses and how long it takes here
            page.goto(url)
            page.get_by_role("heading", name="Experiments").wait_for(timeout=60_000)
            page.get_by_label("Experiment", exact=True).fill("walk")
            page.get_by_label("Experiment", exact=True).press("Enter")
            box = page.locator('[data-testid="stSelectbox"]').filter(has_text="Preset").first
            box.click()
            page.get_by_role("option", name=first_hour.NAME, exact=True).click()
            page.get_by_text(re.compile(r"About \d+\s(s|min), from 2 finished runs on this machine")).wait_for(
                timeout=60_000)
            shot(page, "1-preset")
            page.get_by_role("button", name=re.compile("Launch First hour")).click()
            page.get_by_text("Watch them on Jobs").click(timeout=60_000)

            # -- Jobs: the plan's ETA, a job's phase in words, and the opt-in to a notification
            page.get_by_role("heading", name="Jobs").wait_for()
            launched = [r for r in store.list() if (r["spec"] or {}).get("experiment") == "walk"]
            assert len(launched) == 2
            base = next(r["id"] for r in launched if r["spec"]["name"] == f"{first_hour.LABEL}: baseline")
            store.update(base, state="running", started=time.time() - 10, heartbeat=time.time())
            store.add_event(base, {"phase": "train", "epoch": 2, "epochs": 3, "step": 5, "steps": 10, "eta_s": 25.0,
                                   "images_per_s": 900.0})
            page.get_by_text(re.compile(r"Launched plan walk: 0/2 jobs ended; about \d+ (s|min) left")).wait_for(
                timeout=60_000)
            # the table draws on a canvas; its accessible cells carry the text
            page.get_by_text(re.compile("^training epoch 2/3 · ")).first.wait_for(state="attached", timeout=30_000)
            frame = page.frame_locator("iframe[srcdoc*='requestPermission']").first   # the opt-in's frame
            frame.get_by_role("button", name="Notify me in the browser when it finishes").click()
            frame.get_by_text("on: a notification comes when the plan ends").wait_for()
            shot(page, "2-jobs-eta")

            # -- the plan runs for real; its end comes as a toast and a browser notification
            store.update(base, state="queued", started=None, heartbeat=None)
            log = open(SHOTS / "worker-first-hour.log", "wb")
            worker = subprocess.Popen([sys.executable, "-m", "engine", "worker", "--concurrency", "1",
                                       "--exit-when-idle", "30"], cwd=ROOT,
                                      env={**os.environ, "SLIMBENCH_HOME": str(home)},
                                      stdout=log, stderr=subprocess.STDOUT)
            page.get_by_text(re.compile(r"Plan walk finished: 2 done")).wait_for(timeout=JOB_TIMEOUT_MS)
            page.wait_for_function("window.__notes.length > 0", timeout=30_000)
            assert page.evaluate("window.__notes") == [["Slimbench: plan walk finished", "2 done"]]
            shot(page, "3-jobs-finished")
            runs = {r["spec"]["name"]: r for r in store.list("done") if r["spec"].get("experiment") == "walk"}
            trained = runs[f"{first_hour.LABEL}: baseline"]
            untrained = runs[f"{first_hour.LABEL}: untrained resnet20"]

            # -- Compare: by experiment; the untrained run is flagged and wins only when asked
            goto(page, "Compare")
            page.get_by_role("heading", name="Compare").wait_for(timeout=60_000)
            box = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Experiment").first
            box.click()
            page.get_by_role("option", name="walk", exact=True).click()
            page.keyboard.press("Escape")
            page.get_by_text(re.compile(r"^1 run in view answers at chance level")).wait_for(timeout=60_000)
            page.get_by_text("Pick the winner").click()
            pick(page, "best by", "size (smallest)")
            winner = page.locator('[data-testid="stAlertContentSuccess"]').filter(has_text="best of")
            winner.filter(has_text=trained["id"]).filter(has_text="best of 1 run(s)").wait_for(timeout=60_000)
            chance_box = page.get_by_role("checkbox", name=re.compile("^Include runs at chance level"))
            for ticked, best in ((True, winner.filter(has_text=untrained["id"]).filter(has_text="best of 2 run(s)")),
                                 (False, winner.filter(has_text=trained["id"]).filter(has_text="best of 1 run(s)"))):
                settle(page)   # the winner's program is written on first view: a click waits for that run to end
                page.get_by_text("Include runs at chance level").click()
                expect(chance_box).to_be_checked(checked=ticked)
                best.wait_for(timeout=60_000)

            # -- the winner's .pt2 in a Python without Slimbench, and its readable card
            page.get_by_role("button", name="Winner's PyTorch program (.pt2)").wait_for(timeout=120_000)
            page.get_by_text("Pick the winner").scroll_into_view_if_needed()
            shot(page, "4-compare-winner")
            saved = download(page, "Winner's PyTorch program (.pt2)")
            model, _ = load_model(store.run_dir(trained["id"]) / layout.CHECKPOINT)
            x = torch.randn(4, *model_input(store, trained["id"]))
            torch.save(x, tmp_path / "x.pt")
            p = subprocess.run([sys.executable, "-c", PLAIN_TORCH, str(saved), str(tmp_path / "x.pt")], cwd=tmp_path,
                               capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
            assert p.returncode == 0, p.stderr[-2000:]
            out = json.loads(p.stdout.strip().splitlines()[-1])
            with torch.no_grad():
                assert out == {"size": list(x.shape[1:]), "top1": model(x).argmax(1).tolist(), "engine": False}

            page.goto(f"{url}/compare?run={trained['id']}")
            page.get_by_role("heading", name="Run details").wait_for(timeout=60_000)
            page.get_by_text("Read the model card").click()
            page.get_by_role("heading", name=re.compile("Model card: ")).wait_for(timeout=60_000)
            page.get_by_text(re.compile(r"Wilson interval over 300 test images")).first.wait_for()
            shot(page, "5-model-card")
        finally:
            if worker is not None:
                worker.terminate()
                worker.wait(30)
                log.close()


def model_input(store: Store, run_id: str) -> tuple[int, ...]:
    """C x H x W the run's bundle was traced at (what the .pt2 says too)."""
    from engine.export import read_bundle
    return tuple(read_bundle(store.run_dir(run_id) / layout.CHECKPOINT)["meta"]["input_size"])
