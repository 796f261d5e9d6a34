"""docs/BENCHMARKS.md is regenerated section by section: each command owns the text between its markers."""
from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
from pathlib import Path

import psutil
import torch

DOC = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
HEADER = """# Slimbench benchmarks

Every figure below was written by the command named in its section (`make bench` for the CPU
section, `make bench-gpu` on a CUDA machine for the GPU section); nothing here is typed by hand.
Speed figures are medians; spread is given as the coefficient of variation (CV) or min-max;
comparisons are ratios measured in the same run on the same machine.
"""


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM{gpu}"


def versions() -> str:
    import onnxruntime
    import torchvision
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=DOC.parent.parent).stdout.strip()
        except OSError:
            return ""
    rev = git("rev-parse", "--short", "HEAD")
    if rev and git("status", "--porcelain", "--untracked-files=no", "--", "engine", "bench"):
        rev += " + uncommitted changes to engine/ or bench/"
    return (f"Python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
            f"onnxruntime {onnxruntime.__version__}, commit {rev or '?'}")


def write_section(name: str, body: str, command: str) -> Path:
    begin, end = f"<!-- begin:{name} -->", f"<!-- end:{name} -->"
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    block = (f"{begin}\n## {name.upper()} benchmarks\n\n"
             f"- Command: `{command}`\n- Machine: {machine()}\n- Versions: {versions()}\n- Date: {stamp}\n\n"
             f"{body.strip()}\n{end}")
    text = DOC.read_text() if DOC.is_file() else HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    return DOC


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Markdown table; columns = [(key, header)]; floats formatted compactly."""
    def fmt(v) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)
    out = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(out)
