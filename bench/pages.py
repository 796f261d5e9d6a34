"""Dashboard render-time figures for `python -m bench cpu`: Compare with 500 runs, Jobs idle CPU cost.

The 500 runs are SYNTHETIC rows (bench.synthetic.insert_synthetic_runs) in a throwaway workspace:
they measure rendering, not compression. The Jobs figure is the Streamlit server's own CPU time
while a real headless Chromium keeps the Jobs page open at idle (live fragment polling).
"""
from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from bench.synthetic import insert_synthetic_runs
from engine.store import Store

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(home: Path, env: dict | None = None, log: Path | None = None,
                     script: Path = ROOT / "serve.py") -> Iterator[tuple[str, subprocess.Popen]]:
    """`streamlit run serve.py` (the dashboard behind its Host/Origin guard, as `make run`) on 127.0.0.1 and a
    free port; yields (base URL, process) once healthy. ``script``: another entry that serves the dashboard
    (a test's, adding what it needs)."""
    port = free_port()
    full_env = {**os.environ, "SLIMBENCH_HOME": str(home), **(env or {})}
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(script),
                             "--server.address", "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
                             "--browser.gatherUsageStats", "false"],  # the rest from .streamlit/config.toml, as `make run`
                            cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"streamlit did not become healthy (exit code {proc.poll()})")
            time.sleep(0.3)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log:
            out.close()


def compare_render_seconds(n_runs: int = 500, repeats: int = 5) -> dict[str, float]:
    """AppTest render time of Compare over ``n_runs`` synthetic runs: first (data cache cold) and warm median.

Library imports are done beforehand, as in a running server; the cold figure includes reading and
tabulating every record."""
    import plotly.express  # noqa: F401  (imported once per server process; not part of a page render)
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    home = Path(tempfile.mkdtemp(prefix="slimbench-pages-"))
    old = os.environ.get("SLIMBENCH_HOME")
    os.environ["SLIMBENCH_HOME"] = str(home)
    os.environ["SLIMBENCH_NO_AUTOSTART"] = "1"
    try:
        insert_synthetic_runs(Store(home), n_runs)
        st.cache_data.clear()
        st.cache_resource.clear()
        at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120)
        at.run()
        at.switch_page("views/compare.py")
        t0 = time.perf_counter()
        at.run()
        cold = time.perf_counter() - t0
        warm = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            at.run()
            warm.append(time.perf_counter() - t0)
        assert len(at.dataframe[0].value) == n_runs
        return {"cold_s": cold, "warm_median_s": statistics.median(warm), "runs": n_runs,
                "load_avg": os.getloadavg()[0]}
    finally:
        if old is None:
            os.environ.pop("SLIMBENCH_HOME", None)
        else:
            os.environ["SLIMBENCH_HOME"] = old


def jobs_idle_cpu(seconds: float = 30.0) -> dict[str, float]:
    """Server CPU (% of one core) while Chromium shows the Jobs page with no active job."""
    import psutil
    from playwright.sync_api import sync_playwright

    home = Path(tempfile.mkdtemp(prefix="slimbench-jobs-idle-"))
    insert_synthetic_runs(Store(home), 50)  # SYNTHETIC finished rows so the table is not empty
    with streamlit_server(home, env={"SLIMBENCH_NO_AUTOSTART": "1"}) as (url, proc), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url + "/jobs")
        page.get_by_text("Job details").wait_for(timeout=60000)
        time.sleep(5)  # let the first render settle
        server = psutil.Process(proc.pid)
        c0, t0 = sum(server.cpu_times()[:2]), time.time()
        time.sleep(seconds)
        c1, t1 = sum(server.cpu_times()[:2]), time.time()
        browser.close()
    return {"cpu_pct_of_one_core": 100.0 * (c1 - c0) / (t1 - t0), "seconds": t1 - t0}


def section() -> str:
    cmp_ = compare_render_seconds()
    idle = jobs_idle_cpu()
    return "\n".join([
        "### Dashboard render time", "",
        f"- Compare page with {cmp_['runs']} finished runs (SYNTHETIC rows, render time only; Streamlit AppTest, "
        f"script run to completion, 1-min load average {cmp_['load_avg']:.1f} on this 2-core CPU): first render "
        f"**{cmp_['cold_s']:.2f} s** (results cache cold), reruns "
        f"**{cmp_['warm_median_s']:.2f} s** median (target < 1.5 s — "
        f"{'met' if max(cmp_['cold_s'], cmp_['warm_median_s']) < 1.5 else 'missed'})",
        f"- Jobs page open in headless Chromium at idle for {idle['seconds']:.0f} s: Streamlit server CPU "
        f"**{idle['cpu_pct_of_one_core']:.1f} %** of one core (target < 5 % — "
        f"{'met' if idle['cpu_pct_of_one_core'] < 5 else 'missed'})",
    ])


if __name__ == "__main__":
    print(section())
