"""Shared fixtures: an isolated workspace per session, and one trained digits base run to reuse."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine import settings

ROOT = Path(__file__).resolve().parent.parent

SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
CIFAR_SMALL = Path(settings.cifar10_small() or SHARED_DATASETS / "cifar10-small.zip")
ARTIFACTS = ROOT / "test-artifacts"

# Every test process (and the subprocesses it starts) uses a throwaway workspace.
_SESSION_HOME = Path(settings.test_home()) if settings.test_home() else None


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


def run_spec(spec: dict, home: Path, tmp: Path | None = None, timeout: float = 600) -> dict:
    """Run a spec through the CLI; return the result record (last stdout line)."""
    path = (tmp or home) / f"spec-{abs(hash(json.dumps(spec, sort_keys=True)))}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec))
    p = cli("run", str(path), home=home, timeout=timeout)
    assert p.returncode == 0, f"run failed ({p.returncode}):\n{p.stderr[-3000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def digits_base(session_home) -> dict:
    """ResNet-18 trained on digits for 3 epochs through the CLI: the engine's reference run."""
    from bench.efficiency import REFERENCE_SPEC  # one definition: `make bench` times the same job
    return run_spec(REFERENCE_SPEC, session_home)


@pytest.fixture(scope="session")
def tiny_base(session_home) -> dict:
    """A small, fast base for method tests: ResNet-18 on 8x8 digits, 2 epochs, ONNX skipped."""
    spec = {"data": {"name": "digits"}, "model": {"arch": "resnet18"}, "method": {"name": "baseline"},
            "train": {"epochs": 2}, "measure": {"onnx": False, "latency_runs": 5, "warmup_runs": 1}}
    return run_spec(spec, session_home)


def plain(markdown: str) -> str:
    """Markdown as the reader sees it: user strings reach it escaped (views.common.md_text)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


def uploader(at, name: str):
    """The Experiments uploader ``name`` as it is now: each refused upload empties it under a new key
    (views.common.uploader_key), so that Streamlit lets go of the refused file."""
    resets = at.session_state["uploader_resets"] if "uploader_resets" in at.session_state else {}
    n = resets.get(name, 0)
    return at.file_uploader(key=name if n == 0 else f"{name}~{n}")


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
