"""The shareable report: Compare's view as one self-contained HTML file with interactive plots, the table
with intervals and paired speed-ups, recipes, machines and published points; drawn offline in Chromium."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from bench.pages import CHROMIUM
from bench.synthetic import insert_synthetic_runs
from engine import results
from engine.store import Store
from views import share


HOSTILE = '<img src=x onerror="document.title=\'pwned\'">'


@pytest.fixture()
def report(tmp_path) -> tuple[str, list[dict]]:
    """A report of synthetic runs (made-up numbers, never results) plus a CIFAR ResNet-56 base with a
    hostile name, for which the literature has published points."""
    store = Store(tmp_path / "ws")
    insert_synthetic_runs(store, 6, seed=3)
    now = time.time()
    store.create({"name": HOSTILE, "data": {"name": "cifar10"}, "model": {"arch": "resnet56"},
                  "method": {"name": "baseline", "params": {}}}, state="done", run_id="lit-base")
    store.update("lit-base", finished=now, record={
        "run_id": "lit-base", "name": HOSTILE, "method": "baseline", "method_params": {}, "arch": "resnet56",
        "dataset": "cifar10", "num_classes": 10, "test_images": 10000, "accuracy": 0.93,
        "accuracy_ci95": [0.925, 0.935], "size_bytes": 3_500_000, "macs": 125_750_000, "params": 855_770,
        "latency_ms": 4.2, "latency_p90_ms": 4.6, "cpu_model": "Test CPU 9000", "threads": 2,
        "latency_device": "cpu", "recipe": {"optimizer": "sgd", "lr": 0.1, "epochs": 160}, "finished": now})
    recs = results.records(store)
    view = results.table(recs)
    html = share.report_html(view, {r["run_id"]: r for r in recs},
                             {r["id"]: r["spec"] for r in store.list("done")}, filters="dataset: digits, cifar10")
    return html, recs


@pytest.mark.fast
def test_the_report_holds_plots_table_recipes_machines_and_published_points(report):
    html, recs = report
    assert html.count('class="plotly-graph-div"') == 4               # accuracy vs size, params, MACs, latency
    assert html.count("Plotly.newPlot") == 4
    assert re.findall(r"<script[^>]*\bsrc=", html) == []             # plotly.js is inside, not fetched
    assert len(html) > 3_000_000                                      # ... all of it
    synthetic = next(r for r in recs if r.get("delta_accuracy_ci95"))
    lo, hi = synthetic["delta_accuracy_ci95"]
    assert f"{100 * lo:+.2f} to {100 * hi:+.2f}" in html              # Δ accuracy's paired interval
    assert "0.9250 to 0.9350" in html                                 # the accuracy's Wilson interval
    assert "Test CPU 9000" in html and "&quot;lr&quot;: 0.1" in html  # the machine, the resolved recipe
    assert "VainF/Torch-Pruning" in html and "DepGraph" in html       # the literature's ResNet-56 points
    assert "filters: dataset: digits, cifar10" in html
    assert HOSTILE not in html and "&lt;img src=x" in html            # a run's name is text, never markup


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")
def test_the_report_opens_offline_in_chromium_with_its_plots_drawn(report, tmp_path, page):
    # pytest-playwright's page (Debian's Chromium, as every browser test): a second sync_playwright() in the
    # same session finds the plugin's event loop running and refuses
    path = tmp_path / "slimbench-report.html"
    path.write_text(report[0], encoding="utf-8")
    outside, errors = [], []
    page.route("**/*", lambda route: (outside.append(route.request.url), route.abort())
               if not route.request.url.startswith("file://") else route.continue_())
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 4", timeout=30_000)
    for plot in page.locator(".js-plotly-plot").all():
        assert plot.locator("svg.main-svg").count() >= 1 and plot.locator("g.point, path.point").count() > 0
    assert page.locator("table.runs tbody tr").count() == 7
    assert page.title() == "Slimbench report"                     # the hostile name ran nothing
    assert outside == [] and errors == []


@pytest.mark.fast
def test_the_report_made_in_the_dashboard_draws_its_methods_in_colour(tmp_path, monkeypatch):
    """In the dashboard plotly's default template is Streamlit's, whose colourway is placeholders ("#000001" ...)
    that only Streamlit's page replaces: the downloaded file drew every method in near-black."""
    import plotly.io as pio
    from streamlit.elements import plotly_chart  # noqa: F401  (registers and selects the "streamlit" template)
    assert pio.templates.default == "streamlit"
    store = Store(tmp_path / "ws")
    insert_synthetic_runs(store, 4, seed=1)
    recs = results.records(store)
    html = share.report_html(results.table(recs), {r["run_id"]: r for r in recs},
                             {r["id"]: r["spec"] for r in store.list("done")})
    assert "#000001" not in html and '"colorway":["#636efa"' in html   # plotly_white's colours
