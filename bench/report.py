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

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "BENCHMARKS.md"   # a rehearsal (`python -m bench gpu --rehearse`) points it at a scratch copy
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
    base = (f"Python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
            f"onnxruntime {onnxruntime.__version__}")

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()
        except OSError:
            return ""
    rev = git("rev-parse", "--short", "HEAD")
    if not rev:   # a lent GPU machine gets the working tree without .git: scripts/gpu_prepare.sh wrote the commit
        return base + f", commit {os.environ.get('SLIMBENCH_COMMIT') or '?'}"
    if git("status", "--porcelain", "--untracked-files=no", "--", "engine", "bench"):
        rev += " + uncommitted changes to engine/ or bench/"
    return base + f", commit {rev}"


def _markers(name: str) -> re.Pattern:
    begin, end = f"<!-- begin:{name} -->", f"<!-- end:{name} -->"
    return re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)


def _nested(name: str) -> re.Pattern:
    """Blocks other commands own inside section ``name`` (``<!-- begin:name/key -->``)."""
    return re.compile(rf"<!-- begin:{re.escape(name)}/([\w-]+) -->.*?<!-- end:{re.escape(name)}/\1 -->", re.S)


def render_section(name: str, body: str, command: str, old: str = "", own: tuple[str, ...] = ()) -> str:
    """Section ``name`` with ``body``; blocks other commands wrote into ``old`` (its previous text) kept, but
    not the section's own parts (``own``: keys), which ``body`` has in place or left out on purpose."""
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    kept = [m.group(0) for m in _nested(name).finditer(old)
            if m.group(1) not in own and m.group(0).split(" -->")[0] not in body]
    return (f"<!-- begin:{name} -->\n## {name.upper()} benchmarks\n\n"
            f"- Command: `{command}`\n- Machine: {machine()}\n- Versions: {versions()}\n- Date: {stamp}\n\n"
            + "\n\n".join([body.strip(), *kept]) + f"\n<!-- end:{name} -->")


def write_section(name: str, body: str, command: str, own: tuple[str, ...] = ()) -> Path:
    text = DOC.read_text() if DOC.is_file() else HEADER
    found = _markers(name).search(text)
    block = render_section(name, body, command, found.group(0) if found else "", own)
    text = text[:found.start()] + block + text[found.end():] if found else text.rstrip() + "\n\n" + block + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    return DOC


def out_of_range(checks) -> str | None:
    """The first of a command's numeric options ``(flag, value, low, high)`` outside its bounds, as the error to
    print; None when all are in range."""
    for flag, v, lo, hi in checks:
        if not lo <= v <= hi:
            return f"{flag}: must be between {lo:g} and {hi:g}, got {v}" if isinstance(lo, float) else \
                f"{flag}: must be between {lo} and {hi}, got {v}"
    return None


# Text only a CPU rehearsal writes into a GPU section: such a section is never landed (``take_section``).
REHEARSAL_SIGNS = ("REHEARSAL", "CPU rehearsal", ", no GPU")


def take_section(source: Path, name: str = "gpu") -> str | None:
    """Put section ``name`` of ``source`` (the copy of docs/BENCHMARKS.md a device call sent back in $OUT, which
    started as this checkout's) in place of this document's; None, or why it was refused: no such section, or one
    a CPU rehearsal wrote (its figures say nothing about a GPU)."""
    found = _markers(name).search(source.read_text()) if source.is_file() else None
    if not found:
        return f"{source} has no {name} section"
    ours = _markers(name).search(previous_text())
    new = found.group(0)
    if ours and ours.group(0) == new:
        return f"{source}'s {name} section is the one already here: nothing new came back"
    sign = next((s for s in REHEARSAL_SIGNS if new.count(s) > (ours.group(0).count(s) if ours else 0)), None)
    if sign:
        return f"{source}'s {name} section was written by a CPU rehearsal ({sign!r} in it), not on a GPU"
    text = previous_text() or HEADER
    DOC.write_text(text[:ours.start()] + new + text[ours.end():] if ours else text.rstrip() + "\n\n" + new + "\n")
    return None


def part(name: str, key: str, body: str) -> str:
    """One part of section ``name`` (a sub-command's text, e.g. ``cpu/queue``) between its own markers, so a
    later run that skips it (``--skip queue``) puts its previous text back in its place."""
    return f"<!-- begin:{name}/{key} -->\n{body.strip()}\n<!-- end:{name}/{key} -->"


def section_body(name: str, order: list[str], fresh: dict[str, str], skipped: set[str], old: str) -> tuple[str, list[str]]:
    """Section ``name``'s parts in ``order``: those measured now (``fresh``: key -> text), and each skipped
    one as it stood in ``old`` (the document's previous text). Returns the body and the keys kept from ``old``."""
    blocks, kept = [], []
    for key in order:
        if key in fresh:
            blocks.append(part(name, key, fresh[key]))
        elif key in skipped:
            found = _markers(f"{name}/{key}").search(old)
            if found:
                blocks.append(found.group(0))
                kept.append(key)
    return "\n\n".join(blocks), kept


def progress_body(name: str, order: list[str], fresh: dict[str, str], skipped: set[str], old: str,
                  done: bool) -> tuple[str, list[str], list[str]]:
    """``section_body`` for a run still going (``done`` False): a part it has not reached yet keeps its text
    from ``old`` too, so a run killed mid-way loses no earlier result. Returns the body, the skipped parts
    kept and the parts shown from an earlier run while they wait."""
    pending = set() if done else {k for k in order if k not in fresh and k not in skipped}
    body, kept = section_body(name, order, fresh, skipped | pending, old)
    return body, [k for k in kept if k not in pending], [k for k in kept if k in pending]


def previous_text(doc: Path | None = None) -> str:
    doc = doc or DOC
    return doc.read_text() if doc.is_file() else ""


def render_block(name: str, key: str, body: str, command: str) -> str:
    """A block owned by its own command inside section ``name``, e.g. ``gpu/literature-bases``."""
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (f"<!-- begin:{name}/{key} -->\n{body.strip()}\n\n_Written by `{command}` on {machine()}, "
            f"{versions()}, {stamp}._\n<!-- end:{name}/{key} -->")


def put_block(text: str, name: str, key: str, block: str, command: str) -> str:
    """``text`` with ``block`` in section ``name``: in place of its previous version, else at the section's
    end; a section not there yet is started with only this block."""
    own = _markers(f"{name}/{key}")
    if own.search(text):
        return own.sub(lambda _: block, text)
    found = _markers(name).search(text)
    if not found:
        return text.rstrip() + "\n\n" + render_section(name, block, command) + "\n"
    end = found.end() - len(f"<!-- end:{name} -->")
    return text[:end].rstrip() + "\n\n" + block + "\n" + text[end:]


def write_block(name: str, key: str, body: str, command: str, doc: Path | None = None) -> Path:
    """Write one command's block into section ``name``; the section's own command keeps it when it reruns.
    ``doc``: another file than docs/BENCHMARKS.md (a rehearsal's scratch copy)."""
    doc = doc or DOC
    text = doc.read_text() if doc.is_file() else HEADER
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(put_block(text, name, key, render_block(name, key, body, command), command))
    return doc


def compact(v) -> str:
    """A cell with no unit of its own: floats to 4 significant digits, "–" for nothing measured."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def times(v) -> str:
    """A ratio (x smaller, x faster) as the prose around the tables writes it: 3.42x."""
    return "–" if v is None else f"{v:.2f}x"


def points(v) -> str:
    """An accuracy difference in percentage points, as the prose writes it: 0.07 pt (-0.43 pt: gained)."""
    return "–" if v is None else f"{v:.2f} pt"


def top1(v) -> str:
    """A top-1 accuracy as a fraction, to the fourth digit the other tables show: 0.8857."""
    return "–" if v is None else f"{v:.4f}"


def table(rows: list[dict], columns: list[tuple]) -> str:
    """Markdown table; columns = [(key, header)] or [(key, header, formatter)]; without a formatter floats are
    formatted compactly (``compact``)."""
    fmts = [c[2] if len(c) > 2 else compact for c in columns]
    out = ["| " + " | ".join(c[1] for c in columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(f(r.get(c[0])) for c, f in zip(columns, fmts)) + " |" for r in rows]
    return "\n".join(out)
