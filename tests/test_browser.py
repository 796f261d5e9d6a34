"""The real dashboard in headless Chromium: launch a quick job, watch it finish, see it on Compare,
download its checkpoint, upload an image and see predictions; a screenshot of every page."""
from __future__ import annotations

import io
import re
import time
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from bench.pages import CHROMIUM, streamlit_server
from engine import results
from engine.export import read_bundle
from engine.store import Store

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")]
ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-artifacts"
JOB_TIMEOUT_MS = 420_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("browser-ws")
    SHOTS.mkdir(exist_ok=True)
    with streamlit_server(home, env={"SLIMBENCH_WORKER_IDLE_EXIT": "60"},
                          log=SHOTS / "streamlit-server.log") as (url, _):
        yield url, home
    store = Store(home)
    with store.connect() as db:
        pids = [r[0] for r in db.execute("SELECT pid FROM workers WHERE pid IS NOT NULL").fetchall()]
    import os
    import signal
    for pid in pids:  # the worker this server started
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass


def shot(page, name: str) -> None:
    page.wait_for_timeout(800)  # let charts finish drawing
    page.screenshot(path=str(SHOTS / f"page-{name}.png"), full_page=True)


def goto(page, label: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_text(label, exact=True).click()


def settle(page, timeout_s: float = 120) -> None:
    """Wait until no script run is in progress (Streamlit's running icon gone for a second): a widget
    redrawn by a run that is still going can close an open list or swallow a click, as a user sees."""
    icon = page.locator('[data-testid="stStatusWidgetRunningIcon"]')
    deadline, quiet = time.monotonic() + timeout_s, 0
    while quiet < 4:
        if time.monotonic() > deadline:
            raise AssertionError(f"the page was still running after {timeout_s:.0f} s")
        quiet = 0 if icon.count() else quiet + 1
        page.wait_for_timeout(250)


def pick(page, label: str, option: str) -> None:
    """Choose ``option`` in the selectbox labelled ``label``, typed so that the list filters to it; a list
    closed by a rerun before the click is opened again, as a user would (three tries)."""
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first
    for attempt in (1, 2, 3):
        settle(page)
        box.click()
        box.locator("input").fill(option)
        try:
            page.get_by_role("option", name=option, exact=True).first.click(timeout=15_000)
            return
        except PlaywrightTimeout:
            if attempt == 3:
                raise
            page.keyboard.press("Escape")


def fill_number(page, label: str, value: int) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")


def digit_png() -> bytes:
    from PIL import Image
    from sklearn.datasets import load_digits
    buf = io.BytesIO()
    Image.fromarray((load_digits().images[3] * 255 / 16).astype(np.uint8)).resize((96, 96)).save(buf, format="PNG")
    return buf.getvalue()


def download(page, button: str) -> Path:
    """Click a download button and return the saved file. Streamlit serves a deferred download under
    an id made from its bytes and name, so both checkpoint buttons here serve the same file; once in
    four CI runs the second click brought no download (not reproduced locally). A second click is
    allowed; two lost clicks fail."""
    for attempt in (1, 2):
        try:
            with page.expect_download(timeout=20_000) as dl:
                page.get_by_role("button", name=button).click()
            return Path(dl.value.path())
        except PlaywrightTimeout:
            if attempt == 2:
                raise


def test_main_flow(server, page):
    url, home = server
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.goto(url)
    page.get_by_role("heading", name="Experiments").wait_for()
    for word in ("Queued", "Running", "Device:"):
        page.locator('[data-testid="stSidebar"]').get_by_text(word).first.wait_for()
    page.get_by_role("button", name=re.compile("Launch Quick tour")).wait_for()
    page.locator('[data-testid="stDataFrame"]').first.wait_for()
    shot(page, "experiments-presets")

    page.get_by_role("tab", name="Custom experiment").click()
    pick(page, "Dataset", "digits")
    fill_number(page, "Train images (0 = all)", 300)
    fill_number(page, "Test images (0 = all)", 120)
    fill_number(page, "Baseline epochs", 1)
    fill_number(page, "Latency runs", 5)
    page.get_by_text("Export + verify ONNX").click()  # not the point here; keeps the job short
    page.wait_for_timeout(500)
    shot(page, "experiments-custom")
    page.get_by_role("button", name="Launch", exact=True).click()
    page.get_by_text(re.compile(r"Queued 1 job")).wait_for(timeout=60_000)
    page.get_by_text("Watch them on Jobs").click()

    page.get_by_role("heading", name="Jobs").wait_for()
    page.locator('[data-testid="stSidebar"]').get_by_text("Running").first.wait_for()
    page.locator("strong", has_text=re.compile(r"^done$")).wait_for(timeout=JOB_TIMEOUT_MS)
    page.locator(".js-plotly-plot").first.wait_for()  # live loss/accuracy curves
    shot(page, "jobs")
    run_id = Store(home).list("done")[0]["id"]

    page.get_by_text("Against its base on Compare").click()       # the finished job's link: /compare?run=ID
    page.get_by_role("heading", name="Run details").wait_for(timeout=60_000)
    assert f"run={run_id}" in page.url
    page.locator(".js-plotly-plot").first.wait_for()
    shot(page, "compare")
    record = Store(home).get(run_id)["record"]
    page.get_by_text(f"{record['accuracy']:.4f}", exact=True).first.wait_for()  # the record's number, shown
    original = Store(home).run_dir(run_id) / "model.pt"
    saved = download(page, "Checkpoint bundle (.pt)")
    assert saved.read_bytes() == original.read_bytes()
    assert read_bundle(saved)["arch"] == "resnet18"
    if results.chance_level(record):  # a 1-epoch run may guess: it wins only when chance runs are asked for
        page.get_by_text("Include runs at chance level").click()
        page.wait_for_timeout(500)
    page.get_by_text("Pick the winner").click()                   # one run: it is the winner of no limits
    page.get_by_text(re.compile(r"best of 1 run")).wait_for()
    assert download(page, "Winner's checkpoint (.pt)").read_bytes() == original.read_bytes()

    goto(page, "Try an image")
    page.get_by_role("heading", name="Try an image").wait_for()
    page.locator('input[type="file"]').set_input_files(files=[{"name": "digit.png", "mimeType": "image/png",
                                                               "buffer": digit_png()}])
    page.get_by_text(re.compile(r"Grad-CAM for")).first.wait_for(timeout=120_000)
    page.get_by_text(re.compile(r"\d+\.\d+ ms")).first.wait_for()
    shot(page, "try-image")

    goto(page, "Hardware")
    page.get_by_role("heading", name="CPU and memory").wait_for(timeout=60_000)
    page.wait_for_timeout(4500)  # two more samples: the rolling chart draws
    page.locator(".js-plotly-plot").first.wait_for()
    shot(page, "hardware")
    for name in ("experiments-presets", "jobs", "compare", "try-image", "hardware"):
        assert (SHOTS / f"page-{name}.png").stat().st_size > 10_000


@pytest.mark.parametrize("path, heading", [("/compare", "Compare"), ("/try", "Try an image"),
                                          ("/search", "Auto-compress search")])
def test_a_deep_link_as_a_fresh_servers_first_visit_opens_inside_the_app(tmp_path, page, path, heading):
    """A fresh server's first visit by a deep link comes up inside the app: its navigation, sidebar
    and title (with a pages/ folder beside dashboard.py, Streamlit served it as the page file alone)."""
    with streamlit_server(tmp_path / "ws") as (url, _):
        page.goto(url + path)
        page.get_by_role("heading", name=heading).wait_for(timeout=60_000)
        nav = page.locator('[data-testid="stSidebarNav"]')
        for title in ("Experiments", "Jobs", "Compare", "Search", "Try an image", "Hardware"):
            nav.get_by_text(title, exact=True).wait_for()
        assert nav.get_by_text("common", exact=True).count() == 0
        page.locator('[data-testid="stSidebar"]').get_by_text("Queued").first.wait_for()
        assert page.url.rstrip("/").endswith(path)


def test_an_idle_jobs_page_picks_up_a_job_submitted_elsewhere(tmp_path, page, monkeypatch):
    """At idle the live panels poll slowly (cheap); a job queued from elsewhere (CLI, another tab)
    still shows up in the table and the sidebar's counts, and the page reruns at its busy pace."""
    from engine import jobs
    monkeypatch.setenv("SLIMBENCH_NO_AUTOSTART", "1")               # the job stays queued
    home = tmp_path / "ws"
    with streamlit_server(home) as (url, _):
        page.goto(url + "/jobs")
        page.get_by_text("No jobs yet").wait_for(timeout=60_000)
        job = jobs.submit({"name": "from the CLI", "data": {"name": "digits"}, "model": {"arch": "resnet18"},
                           "train": {"device": "cpu"}}, Store(home))
        # the idle poll (10 s) sees the queue become busy and reruns the page: the table counts the job
        # and the details panel (drawn by a full run only) offers to cancel it
        page.get_by_text(re.compile(r"^queued: 1$")).first.wait_for(timeout=40_000)
        page.get_by_role("button", name=re.compile("Cancel$")).wait_for(timeout=40_000)   # not the bulk ones
        queued = page.locator('[data-testid="stSidebar"] [data-testid="stMetric"]').filter(has_text="Queued")
        queued.get_by_text("1", exact=True).wait_for(timeout=40_000)              # sidebar: 15 s
        jobs.cancel(job, Store(home))


def test_an_experiment_being_set_up_survives_a_look_at_another_page(tmp_path, page, monkeypatch):
    """Streamlit drops the values of widgets a run does not draw: without keeping them, a glance at
    Jobs reset the whole Experiments form (and Compare's axis and limits)."""
    monkeypatch.setenv("SLIMBENCH_NO_AUTOSTART", "1")
    with streamlit_server(tmp_path / "ws") as (url, _):
        page.goto(url)
        page.get_by_role("tab", name="Custom experiment").click()
        pick(page, "Dataset", "digits")
        fill_number(page, "Train images (0 = all)", 777)
        page.wait_for_timeout(1500)  # the values reach the server before we leave
        page.get_by_role("link", name="Jobs").first.click()
        page.get_by_role("heading", name="Jobs").wait_for()
        page.get_by_role("link", name="Experiments").first.click()
        page.get_by_role("heading", name="Experiments").wait_for()
        page.get_by_role("tab", name="Custom experiment").click()
        field = page.get_by_label("Train images (0 = all)", exact=True)
        field.wait_for()
        page.wait_for_timeout(1000)  # the page's run is complete
        assert field.input_value() == "777"
        dataset = page.locator('[data-testid="stSelectbox"]').filter(has_text="Dataset").first
        assert "digits" in dataset.inner_text() + " ".join(i.input_value() for i in dataset.locator("input").all())


def test_compare_flags_a_chance_level_run_and_keeps_it_from_the_winner(tmp_path, page, monkeypatch):
    """A model that calls every image one class is flagged on Compare, in words and in its row, and
    the winner by size is the smallest useful run, not it (until the user ticks it in)."""
    from test_misleading import insert_study
    monkeypatch.setenv("SLIMBENCH_NO_AUTOSTART", "1")
    home = tmp_path / "ws"
    insert_study(home)
    with streamlit_server(home) as (url, _):
        page.goto(url + "/compare")
        page.get_by_text(re.compile(r"1 run in view answers at chance level")).wait_for(timeout=60_000)
        page.get_by_text("Pick the winner", exact=False).first.click()
        pick(page, "best by", "size (smallest)")
        # the alert first shows the default objective's winner: wait for the rerun that ranks by size
        winner = page.locator('[data-testid="stAlertContentSuccess"]').filter(has_text="best of").filter(
            has_text="pruned")
        winner.wait_for(timeout=30_000)
        assert "shirt" not in winner.inner_text()
        shot(page, "compare-chance-level")
        settle(page)
        page.get_by_text("Include runs at chance level", exact=False).click()
        page.locator('[data-testid="stAlertContentSuccess"]').filter(has_text="shirt").wait_for(timeout=30_000)


def test_compare_shows_the_control_verdict_and_the_published_points(tmp_path, page, monkeypatch):
    """Compare in Chromium over a CIFAR-10 ResNet-56 study (synthetic records): on the MACs axis the
    literature's points are drawn beside our runs, the base's gap to the published base is flagged, and a
    pruned run's details say whether it beat its control (and a factorised one's that it did not)."""
    from test_controls import insert_controlled_study
    monkeypatch.setenv("SLIMBENCH_NO_AUTOSTART", "1")
    home = tmp_path / "ws"
    insert_controlled_study(home)
    with streamlit_server(home) as (url, _):
        page.goto(url + "/compare")
        page.get_by_role("heading", name="Compare").wait_for(timeout=60_000)
        page.locator('[data-testid="stRadio"]').filter(has_text="Accuracy against").get_by_text(
            "MACs", exact=True).click()
        chart = page.locator(".js-plotly-plot").filter(has_text="published (literature)")
        chart.wait_for(timeout=30_000)
        # every published point is a marker of that trace: more than one paper's result is drawn
        points = chart.locator(".scatterlayer .trace").filter(has=page.locator("path.point")).last.locator("path.point")
        assert points.count() >= 5
        page.get_by_text(re.compile(r"4\.3 pt below the published base \(94\.37 %\)")).first.wait_for(timeout=30_000)
        shot(page, "compare-literature")
        pick(page, "Run", "pruned · pruned")
        page.locator('[data-testid="stAlertContentSuccess"]').filter(has_text="Against its control").filter(
            has_text="beats its control by 1.8 pt").wait_for(timeout=30_000)
        pick(page, "Run", "fact · fact")
        page.locator('[data-testid="stAlertContentInfo"]').filter(has_text="does not beat its control").wait_for(
            timeout=30_000)
