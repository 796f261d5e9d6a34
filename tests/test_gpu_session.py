"""The lent-GPU call, rehearsed: scripts/gpu_session.sh --rehearse runs each part's real command on the CPU with
the device-absent packages blocked; scripts/gpu_prepare.sh refuses a tree over the call's 64 MiB. No network."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from conftest import CIFAR_SMALL

ROOT = Path(__file__).resolve().parent.parent
SESSION = ROOT / "scripts" / "gpu_session.sh"
PREPARE = ROOT / "scripts" / "gpu_prepare.sh"
REHEARSE_DIR = ROOT / "scripts" / "rehearse"
needs_cifar = pytest.mark.skipif(not CIFAR_SMALL.is_file(), reason=f"no {CIFAR_SMALL}")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def _python(code: str, rehearse: bool) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter of this venv, as a rehearsal starts one (PYTHONPATH) or plainly."""
    path = [str(REHEARSE_DIR)] if rehearse else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(ROOT)])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=120)


def _rehearse(part: str, out: Path, extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "REHEARSE_CIFAR": str(CIFAR_SMALL), "REHEARSE_ARGS": extra,
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SESSION), "--rehearse", part], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.fast
def test_the_blocker_hides_every_device_absent_package_in_this_process_and_its_children():
    sys.path.insert(0, str(REHEARSE_DIR))
    try:
        import device_packages
    finally:
        sys.path.remove(str(REHEARSE_DIR))
    blocked = sorted(set(device_packages.ABSENT) - set(device_packages.CARRIED))
    probe = f"""
        import importlib, importlib.util, subprocess, sys
        for name in {blocked!r}:
            assert importlib.util.find_spec(name) is None, name   # as where it is not installed: probes say no
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as e:
                assert e.name == name
            else:
                raise SystemExit("imported " + name)
        import torch_pruning, optuna                               # carried: wheels travel with the call
        child = subprocess.run([sys.executable, "-c", "import openvino"], capture_output=True, text=True)
        assert child.returncode != 0 and "No module named 'openvino'" in child.stderr, child.stderr
        print("blocked", len({blocked!r}))
        """
    p = _python(probe, rehearse=True)
    assert p.returncode == 0, p.stderr
    assert f"blocked {len(blocked)}" in p.stdout and "openvino" in blocked and "sqlalchemy" in blocked
    # Without the rehearsal's path the same interpreter finds them: the block, not this venv, made the difference.
    here = _python("import importlib.util as u; print(u.find_spec('openvino') is not None)", rehearse=False)
    assert here.stdout.strip() == "True", here.stderr


def _prepare_repo(tmp_path: Path, zip_bytes: int) -> Path:
    """A checkout with the prepare script, a tracked file and a .gpu/cifar10.zip of ``zip_bytes`` (sparse)."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(PREPARE, repo / "scripts" / "gpu_prepare.sh")
    (repo / "tracked.txt").write_text("x" * 1000)
    (repo / "ignored.log").write_text("never counted")
    (repo / ".gitignore").write_text("/.gpu/\n/.whl/\n*.log\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    (repo / ".gpu").mkdir()
    with open(repo / ".gpu" / "cifar10.zip", "wb") as f:
        f.truncate(zip_bytes)
    return repo


@pytest.mark.fast
def test_prepare_counts_what_travels_and_refuses_a_tree_over_64_mib(tmp_path):
    repo = _prepare_repo(tmp_path, 60 * 2**20)
    run = ["bash", "scripts/gpu_prepare.sh", "--check-only"]
    ok = subprocess.run(run, cwd=repo, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    tree = sum(f.stat().st_size for f in (repo / "scripts" / "gpu_prepare.sh", repo / ".gitignore", repo / "tracked.txt"))
    assert f"travels: {tree + 60 * 2**20} bytes" in ok.stdout     # tracked + .gpu; the ignored log is not sent
    # 5 MiB more (a fake extra file's bytes, no download): over the limit, refused
    env = {**os.environ, "GPU_PREPARE_EXTRA_BYTES": str(5 * 2**20)}
    over = subprocess.run(run, cwd=repo, capture_output=True, text=True, timeout=60, env=env)
    assert over.returncode == 1 and "over the call's 64 MiB" in over.stderr, over.stdout + over.stderr
    # An untracked file that is not ignored travels too
    with open(repo / "untracked.bin", "wb") as f:
        f.truncate(5 * 2**20)
    over = subprocess.run(run, cwd=repo, capture_output=True, text=True, timeout=60)
    assert over.returncode == 1, over.stdout


@pytest.mark.fast
def test_session_refuses_an_unknown_part_and_a_run_outside_a_lent_machine(tmp_path):
    bad = subprocess.run(["bash", str(SESSION), "--rehearse", "nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown PART 'nope'" in bad.stderr and "methods bases" in bad.stderr
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    real = subprocess.run(["bash", str(SESSION), "methods"], capture_output=True, text=True, timeout=60, env=env)
    assert real.returncode != 0 and "OUT is unset" in real.stderr


def _check_rehearsal(p: subprocess.CompletedProcess, out: Path, part: str, stores: bool = True) -> str:
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    assert "REHEARSAL of" in p.stdout and f"== {part} exited 0" in p.stdout
    facts = (out / "facts.txt").read_text()
    assert "import torch_pruning" in facts and "methods registered" in facts
    assert (out / f"{part}.log").is_file()
    with tarfile.open(out / "records.tar.gz") as tar:     # the runs' records come back, their weights do not
        names = tar.getnames()
    assert any(n.endswith("result.json") for n in names) == stores and not any(n.endswith(".pt") for n in names)
    doc = (out / "BENCHMARKS.md").read_text()
    gpu = doc[doc.index("<!-- begin:gpu -->"):doc.index("<!-- end:gpu -->")]
    assert "REHEARSAL on CPU, tiny settings, not a measurement" in gpu
    assert "## CPU benchmarks" in doc    # a copy of the real document, its other sections kept
    return gpu


@needs_cifar
def test_rehearsal_of_the_methods_part_runs_the_gpu_command_and_its_gpu_columns_on_the_cpu(tmp_path):
    """Efficiency skipped, three settings (~45 s on 2 cores); the whole part: `gpu_session.sh --rehearse methods`."""
    real_doc = _sha(ROOT / "docs" / "BENCHMARKS.md")
    extra = "--limit 64 --test-limit 32 --image-size 16 --skip efficiency --only 'global ranking,INT8 static,KD T=2'"
    p = _rehearse("methods", tmp_path / "out", extra)
    gpu = _check_rehearsal(p, tmp_path / "out", "methods")
    methods = gpu[gpu.index("<!-- begin:gpu/methods -->"):gpu.index("<!-- end:gpu/methods -->")]
    assert "| GPU lat b1 (ms) | GPU x faster | GPU img/s b256 |" in methods      # the GPU table's own columns
    for row in ("| base ResNet-18 |", "| structured L1 50%, global ranking |", "| INT8 static (ONNX Runtime) |",
                "| distill -> MobileNetV2 (KD T=2) |"):
        assert row in methods, methods
    assert "Not in the table" not in methods and "#### The research's claims" in methods
    assert _sha(ROOT / "docs" / "BENCHMARKS.md") == real_doc      # never the real document


@needs_cifar
def test_rehearsal_of_the_gpu_efficiency_lines_on_the_cpu(tmp_path):
    """The efficiency part alone (--skip methods; ~45 s: its reference job is a process of its own): its GPU-only
    lines (share of the bf16 peak, GPU vs CPU training), run on the CPU."""
    extra = "--limit 64 --test-limit 32 --skip methods"
    p = _rehearse("methods", tmp_path / "out", extra)
    gpu = _check_rehearsal(p, tmp_path / "out", "methods", stores=False)
    eff = gpu[gpu.index("<!-- begin:gpu/efficiency -->"):gpu.index("<!-- end:gpu/efficiency -->")]
    for line in ("of the measured bf16 dense-matmul peak", "GPU vs CPU training, same model", "target ≥ 2x on GPU",
                 "Reference job, `python -m engine run` end to end", "target ≤ 5%"):
        assert line in eff, eff
    assert "Skipped this time, kept from an earlier run: methods" in gpu


@needs_cifar
def test_rehearsal_of_the_bases_part_writes_the_literature_block(tmp_path):
    real_doc = _sha(ROOT / "docs" / "BENCHMARKS.md")
    p = _rehearse("bases", tmp_path / "out", "--limit 64 --test-limit 32 --image-size 16")
    gpu = _check_rehearsal(p, tmp_path / "out", "bases")
    block = gpu[gpu.index("<!-- begin:gpu/literature-bases -->"):gpu.index("<!-- end:gpu/literature-bases -->")]
    for arch in ("resnet18", "resnet56", "resnet20"):
        assert f"| {arch} | 1 |" in block
    assert "REHEARSAL on CPU" in block and "one device call's budget" in block
    assert _sha(ROOT / "docs" / "BENCHMARKS.md") == real_doc


@needs_cifar
def test_rehearsal_of_a_literature_part_through_the_session_and_take_refuses_what_it_wrote(tmp_path):
    """The session's own row for issue 19's table (`literature-resnet20`: base, TRP, its control; ~15-25 s): its
    --rehearse/--doc reach the command, the carried optuna-free path imports with the device's packages only,
    and `python -m bench take` will not land a rehearsal's section."""
    real_doc = _sha(ROOT / "docs" / "BENCHMARKS.md")
    out = tmp_path / "out"
    p = _rehearse("literature-resnet20", out, "")
    assert p.returncode == 0 and "== literature-resnet20 exited 0" in p.stdout, p.stdout[-4000:] + p.stderr[-4000:]
    doc = (out / "BENCHMARKS.md").read_text()
    part = doc[doc.index("<!-- begin:gpu/literature/resnet20 -->"):doc.index("<!-- end:gpu/literature/resnet20 -->")]
    assert "| low-rank TRP" in part and "no GPU" in part        # written on this CPU, and it says so
    took = subprocess.run([sys.executable, "-m", "bench", "take", str(out / "BENCHMARKS.md")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert took.returncode == 2 and "CPU rehearsal" in took.stderr, took.stderr
    assert _sha(ROOT / "docs" / "BENCHMARKS.md") == real_doc


@pytest.mark.fast
def test_a_setting_its_spec_check_refuses_is_a_skipped_row_not_the_end_of_the_table(monkeypatch):
    """Found rehearsing: a check_spec refusal (there, a runtime probe) ended `bench gpu` with every later row lost."""
    from bench import methods_table
    from bench.methods_table import Setting

    def fake_run(spec, store):   # no training: the loop's handling is under test
        return {"run_id": "20261203-000000-abcdef", "method": spec.method.name, "accuracy": 0.5, "size_bytes": 1000, "macs": 100,
                "latency_ms": 1.0}
    monkeypatch.setattr(methods_table.runner, "run_spec", fake_run)
    monkeypatch.setattr(methods_table, "settings", lambda ft, epochs, arch: [
        Setting("refused", "prune_structured", {"ratio": 7.0, "finetune_epochs": ft}),
        Setting("after it", "prune_unstructured", {"amount": 0.5, "finetune_epochs": ft})])
    res = methods_table.run({"name": "digits"}, 1, 1, 1, store=None, device="cpu", log=lambda m: None)
    assert [r["label"] for r in res["rows"]] == ["base ResNet-20", "after it"]
    assert len(res["skipped"]) == 1 and res["skipped"][0].startswith("refused: ") and "ratio" in res["skipped"][0]


@pytest.mark.fast
def test_the_report_names_the_commit_scripts_gpu_prepare_wrote_where_no_git_travels(tmp_path, monkeypatch):
    from bench import report
    monkeypatch.setattr(report, "ROOT", tmp_path)          # the device's copy: a working tree, no .git
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.setenv("SLIMBENCH_COMMIT", "abc1234 + uncommitted changes to engine/ or bench/")
    assert report.versions().endswith(", commit abc1234 + uncommitted changes to engine/ or bench/")
    monkeypatch.delenv("SLIMBENCH_COMMIT")
    assert report.versions().endswith(", commit ?")


@pytest.mark.fast
def test_bench_refuses_rehearsal_flags_where_they_would_mislead(capsys):
    import bench.__main__ as bench_cli
    assert bench_cli.main(["cpu", "--rehearse"]) == 2                       # a CPU section is measured, not rehearsed
    assert bench_cli.main(["gpu", "--rehearse", "--doc", str(ROOT / "docs" / "BENCHMARKS.md")]) == 2
    assert bench_cli.main(["gpu", "--only", "INT8"]) == 2                   # a real table would lose its other rows
    err = capsys.readouterr().err
    assert "--rehearse is for the GPU commands" in err and "never writes docs/BENCHMARKS.md" in err
    assert "--only is for a rehearsal" in err
