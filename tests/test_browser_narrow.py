"""At an 800 px wide window (the sidebar open), no number, tile label or button label is cut short on Jobs,
Compare's run details, Hardware or a finished search's page: their rows of tiles and buttons wrap instead (they were fixed columns, which
cut "0.7200" to "0.7…" and "Cancel selected" to "Ca…"); no word of Compare's filter labels breaks ("Architectu|re");
no multiselect option or chip is cut (Compare's experiment filter, the Auto-compress candidates). Screenshots:
test-artifacts/narrow-*.png."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.pages import CHROMIUM, streamlit_server
from bench.synthetic import insert_synthetic_runs
from engine.store import Store
from test_browser import SHOTS
from test_search_page import insert_study

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")]

# Buttons and metric tiles in the page whose text (or a part of it) is wider than its box: cut by an ellipsis.
CUT = """() => [...document.querySelectorAll('[data-testid=stMain] button, [data-testid=stMain] [data-testid=stMetric]')]
  .filter(b => b.offsetParent !== null && [b, ...b.querySelectorAll('*')].some(e => e.scrollWidth > e.clientWidth + 1))
  .map(b => b.innerText.replace(/\\s+/g, ' ').trim())"""

# Words of the widget labels in the page that break across lines (a column too narrow: "Architectu|re").
BROKEN_WORDS = """() => [...document.querySelectorAll('[data-testid=stMain] [data-testid=stWidgetLabel] p')]
  .filter(p => p.offsetParent !== null && p.firstChild && p.firstChild.nodeType === 3)
  .flatMap(p => { const t = p.firstChild, out = []; let i = 0;
    for (const w of t.data.split(' ')) { const r = document.createRange(); r.setStart(t, i); r.setEnd(t, i + w.length);
      if (w && r.getClientRects().length > 1) out.push(w); i += w.length + 1; }
    return out; })"""

# Multiselect chips and the options of an open list whose text is wider than its box: a chip ellipsises,
# an option is clipped at the list's edge.
CUT_OPTIONS = """() => [...document.querySelectorAll('[data-testid=stMain] [data-tag] span, [role=option] *')]
  .filter(e => e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1).map(e => e.innerText)"""
LONG_EXPERIMENT = "Quick tour on Fashion-MNIST 16 px: ResNet-20 base, every preset method with its control, December"


def test_a_narrow_window_cuts_no_number_or_button(tmp_path, page):
    home = tmp_path / "ws"
    store = Store(home)
    _, child = insert_synthetic_runs(store, 2)
    rec = store.get(child)["record"]
    store.update(child, record={**rec, "test_images": 300, "flips_to_wrong": 1 / 300, "flips_to_right": 2 / 300,
                                "experiment": LONG_EXPERIMENT})
    job = store.create({"name": "Pipeline: prune 50 % → distil from the ResNet-56 teacher → quantise INT8",
                        "experiment": "narrow", "data": {"name": "digits"}, "model": {"arch": "resnet20"},
                        "method": {"name": "baseline", "params": {}}}, state="failed")
    store.update(job, error="RuntimeError: out of memory; lower data.batch_size")
    search = insert_study(home)["search"]
    SHOTS.mkdir(exist_ok=True)
    page.set_viewport_size({"width": 800, "height": 800})
    with streamlit_server(home, env={"SLIMBENCH_NO_AUTOSTART": "1"}, log=SHOTS / "streamlit-narrow.log") as (url, _):
        page.goto(f"{url}/compare?run={child}")
        page.get_by_role("heading", name="Run details").wait_for(timeout=60_000)
        page.get_by_text("Newly wrong").wait_for(timeout=60_000)
        for button in ("Download table (CSV)", "Download this view as a report (HTML)", "Checkpoint bundle (.pt)",
                       "Model card (JSON)"):  # drawn, not their loading placeholders: their labels are checked
            page.get_by_role("button", name=button).wait_for(timeout=60_000)
        page.get_by_role("heading", name="Run details").scroll_into_view_if_needed()
        page.wait_for_timeout(1000)  # tiles settle into their rows
        page.screenshot(path=str(SHOTS / "narrow-compare.png"), full_page=True)
        assert page.evaluate(CUT) == []
        assert page.evaluate(BROKEN_WORDS) == []   # the filters' labels, "Architecture" first
        experiment = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Experiment").first
        experiment.scroll_into_view_if_needed()
        page.wait_for_timeout(500)                  # a list opened while the page scrolls closes again
        experiment.click()
        long_option = page.get_by_role("option", name=re.compile("December"))
        long_option.wait_for(state="visible", timeout=30_000)
        assert page.evaluate(CUT_OPTIONS) == []     # the long name's list entry: elided, not clipped
        page.screenshot(path=str(SHOTS / "narrow-compare-filter.png"))
        long_option.click()
        page.keyboard.press("Escape")
        page.wait_for_timeout(1000)
        assert page.evaluate(CUT_OPTIONS) == []     # and its chip
        experiment.get_by_test_id("stTooltipIcon").hover()
        page.get_by_test_id("stTooltipContent").get_by_text(LONG_EXPERIMENT).wait_for(timeout=10_000)  # in full
        page.screenshot(path=str(SHOTS / "narrow-compare-filter-help.png"))
        page.goto(f"{url}/jobs")
        page.get_by_role("heading", name="Job details").wait_for(timeout=60_000)
        for button in ("Retry", "Cancel all (0)", "Retry all (1)"):
            page.get_by_role("button", name=button, exact=True).wait_for(timeout=60_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(SHOTS / "narrow-jobs.png"), full_page=True)
        assert page.evaluate(CUT) == []
        page.goto(f"{url}/hardware")
        page.get_by_text("Load average (1 / 5 / 15 min)").wait_for(timeout=60_000)
        page.screenshot(path=str(SHOTS / "narrow-hardware.png"), full_page=True)
        assert page.evaluate(CUT) == []
        page.goto(f"{url}/search?run={search}")   # its five tiles cut "0.9500" to "0.9…", its downloads too
        page.get_by_text("Downloads of the winner").wait_for(timeout=60_000)
        page.get_by_role("button", name="Winner's ONNX model").wait_for(timeout=60_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(SHOTS / "narrow-search.png"), full_page=True)
        assert page.evaluate(CUT) == []
        page.goto(f"{url}/experiments")
        page.get_by_role("tab", name="Auto-compress").wait_for(timeout=60_000)
        page.wait_for_timeout(3000)                 # the tabs are inert until the page's first run ends
        page.keyboard.press("Escape")
        page.get_by_role("tab", name="Auto-compress").click()
        page.get_by_text("Candidates searched").wait_for(timeout=60_000)
        page.get_by_text("Candidates searched").scroll_into_view_if_needed()
        page.wait_for_timeout(1000)
        page.screenshot(path=str(SHOTS / "narrow-autocompress.png"), full_page=True)
        assert page.evaluate(CUT_OPTIONS) == []     # every candidate's chip whole
