"""Shared fixtures: an isolated workspace per session, and one trained digits base run to reuse."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine import settings

ROOT = Path(__file__).resolve().parent.parent

SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
CIFAR_SMALL = Path(settings.cifar10_small() or SHARED_DATASETS / "cifar10-small.zip")
ARTIFACTS = ROOT / "test-artifacts"

# pytest-xdist's worker name ("gw0", "gw1"; unset in a plain run): `make test` runs two workers.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")

# Every test process (and the subprocesses it starts) uses a throwaway workspace; under xdist one per worker,
# so that a worker's session runs never show up in the other's listings.
_SESSION_HOME = Path(settings.test_home()) / (XDIST_WORKER or "") if settings.test_home() else None


def pytest_configure(config):
    """Under xdist, each worker (and the jobs its tests start) gets its share of the cores as torch threads:
    two two-thread workers would ask 2 cores for 4 threads, and threads beyond the free cores cost dearly (while
    other work shared the box, a test subset took 3.5-4.5x as long in one two-thread process as in two one-thread
    workers; docs/BENCHMARKS.md, 2026-12-02)."""
    if XDIST_WORKER:
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ["OMP_NUM_THREADS"] = threads
        import torch  # only here: a plain run leaves torch's default threads alone
        torch.set_num_threads(int(threads))


def _uses_module_fixture(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)  # pytest's own record of the fixtures an item uses
    return bool(info) and any(d.scope == "module" for defs in info.name2fixturedefs.values() for d in defs)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups (`--dist loadgroup`)
def pytest_collection_modifyitems(config, items):
    """xdist groups (one worker runs a group's tests, one after another), besides those a test names itself
    (`xdist_group`, e.g. "ray"): the browser tests, each starting Chromium, a dashboard server and its worker
    (two such stacks at once on 2 cores miss their waits) and writing fixed names in test-artifacts/; and the
    tests of a module that share a module-scoped fixture (a trained run, a search), built once, not per worker."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        if item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.xdist_group("browser"))
        elif _uses_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


@pytest.fixture(scope="session")
def session_home(tmp_path_factory) -> Path:
    home = _SESSION_HOME or tmp_path_factory.mktemp("workspace")
    os.environ["SLIMBENCH_HOME"] = str(home)
    return home


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """A fresh, empty workspace for one test."""
    h = tmp_path / "ws"
    monkeypatch.setenv("SLIMBENCH_HOME", str(h))
    return h


def cli(*args: str, home: Path, input: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m engine ...`` in a fresh process against workspace ``home``."""
    env = {**os.environ, "SLIMBENCH_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, env=env, input=input,
                          capture_output=True, text=True, timeout=timeout)


def cli_here(*args: str, home: Path) -> subprocess.CompletedProcess:
    """``python -m engine ...`` run by ``engine.cli.main`` in this process, against workspace ``home``: for
    commands checked for what they refuse or write, where a fresh process would only add seconds of imports.
    An uncaught exception comes back as the interpreter would report it (exit 1, a traceback on stderr), so
    the same assertions hold. Commands that time a model keep ``cli``: they set the process's threads."""
    import contextlib
    import io
    import traceback

    from engine.cli import main
    out, err = io.StringIO(), io.StringIO()
    saved = os.environ.get("SLIMBENCH_HOME")
    os.environ["SLIMBENCH_HOME"] = str(home)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else 1
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        if saved is None:
            os.environ.pop("SLIMBENCH_HOME", None)
        else:
            os.environ["SLIMBENCH_HOME"] = saved
    return subprocess.CompletedProcess(["engine", *args], code, out.getvalue(), err.getvalue())


def run_spec(spec: dict, home: Path, tmp: Path | None = None, timeout: float = 600) -> dict:
    """Run a spec through the CLI; return the result record (last stdout line)."""
    path = (tmp or home) / f"spec-{abs(hash(json.dumps(spec, sort_keys=True)))}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec))
    p = cli("run", str(path), home=home, timeout=timeout)
    assert p.returncode == 0, f"run failed ({p.returncode}):\n{p.stderr[-3000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_here(spec: dict, home: Path) -> dict:
    """Run a spec in this process (engine.runner.run_spec) against workspace ``home``; the record as the CLI
    prints it (JSON: tuples as lists). For short jobs, whose CLI process would cost more in imports than the
    job itself; ``run_spec`` keeps the CLI path covered."""
    from engine.runner import run_spec as run
    from engine.store import Store
    return json.loads(json.dumps(run(spec, Store(home))))


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright's launch arguments, with Debian's Chromium (bench.pages) for every browser test."""
    from bench.pages import CHROMIUM, CHROMIUM_ARGS
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def digits_base(session_home) -> dict:
    """ResNet-18 trained on digits for 3 epochs through the CLI: the engine's reference run."""
    from bench.efficiency import REFERENCE_SPEC  # one definition: `make bench` times the same job
    return run_spec(REFERENCE_SPEC, session_home)


@pytest.fixture(scope="session")
def tiny_base(session_home) -> dict:
    """A small, fast base for method tests: ResNet-18 on 8x8 digits, 2 epochs, ONNX skipped (trained in this
    process: digits_base covers the CLI's run)."""
    spec = {"data": {"name": "digits"}, "model": {"arch": "resnet18"}, "method": {"name": "baseline"},
            "train": {"epochs": 2}, "measure": {"onnx": False, "latency_runs": 5, "warmup_runs": 1}}
    return run_here(spec, session_home)


# The small in-process base that test_autocompress, test_pipeline and test_distill_students start from:
# digits, 200 training images, one epoch, nothing timed beyond what a record needs. Their assertions are
# about what a method makes of a trained ResNet-18 (structure, links, the search's bookkeeping), so one base
# trained per session serves them all; each module still gets a workspace of its own (see adopt_run).
SMALL_DATA = {"name": "digits", "limit": 200, "test_limit": 120, "batch_size": 32}
SMALL_MEASURE = {"onnx": False, "deploy": False, "latency_runs": 3, "warmup_runs": 1, "batch_size": 8,
                 "paired_rounds": 0, "threads": 1}


@pytest.fixture(scope="session")
def small_base(tmp_path_factory) -> tuple[Path, dict]:
    """(its workspace, its record): ResNet-18 on SMALL_DATA for one epoch, trained once per session."""
    from engine.runner import run_spec as run_here
    from engine.store import Store
    store = Store(tmp_path_factory.mktemp("small-base-ws"))
    return store.root, run_here({"data": SMALL_DATA, "model": {"arch": "resnet18"}, "method": {"name": "baseline"},
                                 "train": {"epochs": 1}, "measure": SMALL_MEASURE}, store)


def adopt_run(source_root: Path, record: dict, store) -> dict:
    """Copy finished run ``record`` of workspace ``source_root`` into ``store`` under the same run id
    (its row, and its folder with the checkpoint), so that a module's runs start from it in a workspace
    of their own, as if it had been trained there. Returns the record with its paths in ``store``."""
    from engine.store import Store
    source = Store(source_root)
    run_id = record["run_id"]
    row = source.get(run_id)
    shutil.copytree(source.run_dir(run_id), store.run_dir(run_id), dirs_exist_ok=True)
    moved = json.loads(json.dumps(record).replace(json.dumps(str(source.run_dir(run_id)))[1:-1],
                                                  json.dumps(str(store.run_dir(run_id)))[1:-1]))
    store.create(row["spec"], state="done", run_id=run_id, created=row["created"])
    store.update(run_id, record=moved, started=row["started"], finished=row["finished"])
    return moved


def plain(markdown: str) -> str:
    """Markdown as the reader sees it: user strings reach it escaped (views.common.md_text)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


def uploader(at, name: str):
    """The Experiments uploader ``name`` as it is now: each refused upload empties it under a new key
    (views.common.uploader_key), so that Streamlit lets go of the refused file."""
    resets = at.session_state["uploader_resets"] if "uploader_resets" in at.session_state else {}
    n = resets.get(name, 0)
    return at.file_uploader(key=name if n == 0 else f"{name}~{n}")


@pytest.fixture()
def page_ws(tmp_path, monkeypatch) -> Path:
    """An empty workspace the pages read (AppTest: no worker starts), with Streamlit's caches emptied so that
    an earlier test's store is not reused."""
    import streamlit as st
    home = tmp_path / "ws"
    monkeypatch.setenv("SLIMBENCH_HOME", str(home))
    monkeypatch.setenv("SLIMBENCH_NO_AUTOSTART", "1")
    st.cache_resource.clear()
    st.cache_data.clear()
    return home


def compare_page(home: Path, monkeypatch, fill) -> "AppTest":  # noqa: F821
    """Compare, rendered by AppTest over a fresh workspace that ``fill(home)`` writes records into
    (no worker started; Streamlit's caches cleared so an earlier test's store is not reused)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("SLIMBENCH_HOME", str(home))
    monkeypatch.setenv("SLIMBENCH_NO_AUTOSTART", "1")
    st.cache_resource.clear()
    st.cache_data.clear()
    fill(home)
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120)
    at.run()
    at.switch_page("views/compare.py")
    at.run()
    return at
