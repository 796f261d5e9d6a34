"""A tiny auto-compress search on digits runs in the background worker while its page is open in
Chromium: the page shows more trials later than it did at first, without a reload, then the winner."""
from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from bench.pages import CHROMIUM, streamlit_server
from engine import jobs
from engine.runner import run_spec
from engine.store import Store

from test_autocompress import MEASURE
from test_browser import SHOTS, shot

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")]
TRIALS = 3
# The smallest search that still has several trials to watch: a CIFAR ResNet-20 (0.27 M parameters) on a
# few digits, one candidate (unstructured pruning, no INT8 export), MACs minimised within a loose limit.
DATA = {"name": "digits", "limit": 150, "val_limit": 60, "test_limit": 60, "batch_size": 32}
SEARCH = {"max_drop_pt": 100.0, "objective": "macs", "trials": TRIALS, "space": ["unstructured"], "seed": 3,
          "promote": 0}


def trials_shown(page) -> int:
    """The finished-or-stopped trial count the page's Trials metric shows now."""
    value = page.locator('[data-testid="stMetric"]').filter(has_text="Trials").locator(
        '[data-testid="stMetricValue"]').inner_text()
    return int(value.split("/")[0])


def test_a_search_page_updates_live_while_its_trials_run(tmp_path, page):
    home = tmp_path / "ws"
    store = Store(home)
    base = run_spec({"data": DATA, "model": {"arch": "resnet20"}, "method": {"name": "baseline"},
                     "train": {"epochs": 1}, "measure": MEASURE}, store)
    SHOTS.mkdir(exist_ok=True)
    with streamlit_server(home, env={"SLIMBENCH_WORKER_IDLE_EXIT": "20"}) as (url, _):
        search = jobs.submit({"data": DATA, "model": {"from_run": base["run_id"]}, "train": {"epochs": 1},
                              "measure": MEASURE, "name": "live search",
                              "method": {"name": "autocompress", "params": SEARCH}}, store)
        page.set_viewport_size({"width": 1400, "height": 1000})
        page.goto(f"{url}/search?run={search}")
        page.get_by_role("heading", name="Auto-compress search").wait_for(timeout=60_000)
        page.locator('[data-testid="stMetric"]').filter(has_text="Trials").wait_for(timeout=60_000)
        first = trials_shown(page)
        assert first < TRIALS, "the search ended before the page first showed it: nothing to watch"
        page.wait_for_function(  # no reload: the page's own polling brings the later trials
            """([first]) => [...document.querySelectorAll('[data-testid="stMetric"]')]
                 .filter(m => m.innerText.includes('Trials'))
                 .some(m => parseInt(m.querySelector('[data-testid="stMetricValue"]').innerText) > first)""",
            arg=[first], timeout=240_000, polling=500)
        page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
        page.get_by_text(re.compile(r"^Winner")).first.wait_for(timeout=240_000)
        assert trials_shown(page) == TRIALS
        page.get_by_text("Test set read only for the final front", exact=False).wait_for()
        page.set_viewport_size({"width": 1400, "height": 2600})   # the whole page in one screenshot
        shot(page, "search")
    with store.connect() as db:   # the worker this server's job started
        pids = [r[0] for r in db.execute("SELECT pid FROM workers WHERE pid IS NOT NULL").fetchall()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
