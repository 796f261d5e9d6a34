"""In headless Chromium: a preset states how long it takes here (from this machine's runs), a launched
plan shows its overall ETA and its jobs' phases on Jobs, a click asks the browser for notifications,
"Cancel all" of the experiment ends the plan, and a toast and a browser notification say so."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from bench.pages import CHROMIUM, CHROMIUM_ARGS, streamlit_server
from engine import presets, procs
from engine.store import Store
from engine.validation import check_spec

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")]
SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts"

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


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


def test_a_launched_preset_shows_its_eta_and_announces_its_end(tmp_path, page, monkeypatch):
    monkeypatch.setenv("SLIMBENCH_NO_AUTOSTART", "1")            # the plan stays queued: the test moves it
    home = tmp_path / "ws"
    store = Store(home)
    ok, _ = presets.check(presets.quick_tour())
    t0 = time.time() - 50_000
    for s in ok:                                                 # this machine ran each of its jobs before
        run = store.create(check_spec(presets.resolve([s], presets.ref(0))[0]).to_dict(), state="done")
        store.update(run, started=t0, finished=t0 + 40, host=procs.host())
    SHOTS.mkdir(exist_ok=True)
    page.add_init_script(FAKE_NOTIFICATIONS)
    page.set_viewport_size({"width": 1400, "height": 1000})
    with streamlit_server(home, log=SHOTS / "streamlit-progress.log") as (url, _):
        page.goto(url)
        page.get_by_role("heading", name="Experiments").wait_for(timeout=60_000)
        page.get_by_label("Experiment", exact=True).fill("shoes")
        page.get_by_label("Experiment", exact=True).press("Enter")
        page.get_by_text(re.compile(r"About \d+ min, from \d+ finished runs on this machine")).wait_for(timeout=60_000)
        page.screenshot(path=str(SHOTS / "page-experiments-preset-estimate.png"), full_page=True)
        page.get_by_role("button", name=re.compile("Launch Quick tour")).click()
        page.get_by_text("Watch them on Jobs").click(timeout=60_000)

        page.get_by_role("heading", name="Jobs").wait_for()
        launched = [r for r in store.list() if (r["spec"] or {}).get("experiment") == "shoes"]
        base = min(launched, key=lambda r: r["created"])["id"]
        store.update(base, state="running", started=time.time() - 10, heartbeat=time.time())
        store.add_event(base, {"phase": "train", "epoch": 2, "epochs": 6, "step": 5, "steps": 10, "eta_s": 25.0,
                               "images_per_s": 900.0})
        page.get_by_text(re.compile(r"Launched plan shoes: 0/\d+ jobs ended; about \d+ min left")).wait_for(
            timeout=60_000)
        # the table draws on a canvas; its accessible cells carry the text
        page.get_by_text(re.compile("^training epoch 2/6 · ")).first.wait_for(state="attached", timeout=30_000)
        frame = page.frame_locator("iframe[srcdoc*='requestPermission']").first   # the opt-in's frame
        frame.get_by_role("button", name="Notify me in the browser when it finishes").click()
        frame.get_by_text("on: a notification comes when the plan ends").wait_for()
        page.wait_for_timeout(800)
        page.screenshot(path=str(SHOTS / "page-jobs-plan-eta.png"), full_page=True)

        store.update(base, state="queued", started=None)          # all queued again: one click ends the plan
        page.get_by_role("button", name=re.compile(rf"Cancel all \({len(launched)}\)")).click(timeout=60_000)
        page.get_by_text(re.compile(rf"Plan shoes finished: {len(launched)} cancelled")).wait_for(timeout=60_000)
        page.wait_for_function("window.__notes.length > 0", timeout=30_000)
        notes = page.evaluate("window.__notes")
        assert notes == [["Slimbench: plan shoes finished", f"{len(launched)} cancelled"]]
        page.screenshot(path=str(SHOTS / "page-jobs-plan-finished.png"), full_page=True)
