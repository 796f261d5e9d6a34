"""The engine's import structure: layered (import-linter's contracts in .importlinter), acyclic, and
its settings read in one place."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from engine import settings

pytestmark = pytest.mark.fast  # seconds: the contracts are checked in the quick lane too

ENGINE = ROOT / "engine"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _engine_imports(path: Path, modules: set[str]) -> set[str]:
    """The engine modules ``path`` imports anywhere in it (in functions too), as import-linter counts
    them: ``from pkg import mod`` is an import of ``pkg.mod`` when that is a module, else of ``pkg``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return (found & modules) - {name}


def _engine_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in ENGINE.rglob("*.py")}
    return {m: _engine_imports(p, set(paths)) for m, p in paths.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_import_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    p = subprocess.run([str(lint), str(ROOT / ".importlinter")], cwd=ROOT, capture_output=True,
                       text=True, env={"PATH": str(lint.parent)}, timeout=300)
    assert p.returncode == 0, f"lint-imports: a contract is broken\n{p.stdout[-6000:]}\n{p.stderr[-2000:]}"


def test_every_engine_module_has_a_layer():
    """A module missing from the layers contract would escape it: import-linter checks only listed ones."""
    contract = (ROOT / ".importlinter").read_text()
    listed = set(re.findall(r"\bengine\.[a-z0-9_]+", contract))  # names may hold digits (int8_cpu)
    top = {f"engine.{p.stem}" for p in ENGINE.glob("*.py") if p.stem != "__init__"}
    top |= {f"engine.{p.parent.name}" for p in ENGINE.glob("*/__init__.py")}
    assert top - listed == set(), f"add these to a layer in .importlinter: {sorted(top - listed)}"


def test_engine_modules_import_no_cycle():
    graph = _engine_graph()
    assert "engine.methods.pipeline" in graph and "engine.runner" in graph["engine.jobproc"]  # the scan sees lazy ones
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_cycle_is_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_a_spec_is_checked_structurally_without_torch():
    code = ("import sys\n"
            "from engine.spec import JobSpec, SpecError\n"
            "spec = JobSpec.from_dict({'data': {'name': 'digits'}, 'model': {'arch': 'resnet18'}})\n"
            "try:\n"
            "    JobSpec.from_dict({'data': {'name': 'digits', 'limit': 0}, 'model': {'arch': 'resnet18'}})\n"
            "except SpecError as e:\n"
            "    assert e.field == 'data.limit'\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "print('ok')\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={})
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


def test_settings_doc_is_current():
    doc = ROOT / "docs" / "SETTINGS.md"
    assert doc.read_text() == settings.markdown(), "regenerate: python -m engine.settings > docs/SETTINGS.md"


def test_only_engine_settings_reads_slimbench_variables():
    """``os.environ.get("SLIMBENCH_...")``, ``os.getenv(...)`` or ``os.environ["SLIMBENCH_..."]`` read outside
    engine/settings.py (writing one, as a process starter does, is fine)."""
    def reads(path: Path) -> list[str]:
        out = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            key = None
            if isinstance(node, ast.Call) and node.args and \
                    ast.unparse(node.func).endswith(("environ.get", "environ.pop", "getenv")):
                key = node.args[0]
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and \
                    ast.unparse(node.value).endswith("environ"):
                key = node.slice
            if isinstance(key, ast.Constant) and str(key.value).startswith("SLIMBENCH_"):
                out.append(f"{path.relative_to(ROOT)}:{node.lineno} {key.value}")
        return out

    files = [*ENGINE.rglob("*.py"), *(ROOT / "pages").glob("*.py"), ROOT / "dashboard.py"]
    found = [r for f in files if f != ENGINE / "settings.py" for r in reads(f)]
    assert not found, found
    assert {s.name for s in settings.SETTINGS} >= {"SLIMBENCH_HOME", "SLIMBENCH_BACKEND", "SLIMBENCH_HEARTBEAT_S"}


def test_a_bad_concurrency_keeps_its_message(monkeypatch):
    from engine.errors import SpecError
    monkeypatch.setenv("SLIMBENCH_WORKER_CONCURRENCY", "0")
    with pytest.raises(SpecError, match="SLIMBENCH_WORKER_CONCURRENCY: must be >= 1, got 0"):
        settings.worker_concurrency()
