"""Shared dashboard plumbing: cached handles, the sidebar, formatting and safe downloads.

Not a page (dashboard.py lists the pages explicitly). No ML code here either: everything heavy
lives in ``engine`` and is cached with ``st.cache_resource``.
"""
from __future__ import annotations

import math
import numbers
import re
from pathlib import Path
from typing import Any

import streamlit as st

from engine import jobs, methods, store as store_mod
from engine.store import Store, check_run_id

ARTIFACT_FILES = {"checkpoint": ("model.pt", "application/octet-stream"),
                  "onnx": ("model.onnx", "application/octet-stream"),
                  "openvino": ("model.xml", "application/zip"),   # with its weights, model.bin: one zip
                  "card": ("card.json", "application/json"),
                  "pt2": ("model.pt2", "application/octet-stream"),
                  "torchscript": ("model.torchscript.pt", "application/octet-stream")}


# (file, title, icon, url path); the first is the default page at "/".
PAGES = (("views/experiments.py", "Experiments", ":material/science:", ""),
         ("views/jobs.py", "Jobs", ":material/pending_actions:", "jobs"),
         ("views/compare.py", "Compare", ":material/scatter_plot:", "compare"),
         ("views/search.py", "Search", ":material/travel_explore:", "search"),
         ("views/try_image.py", "Try an image", ":material/image_search:", "try"),
         ("views/hardware.py", "Hardware", ":material/memory:", "hardware"))


def app_pages() -> list:
    return [st.Page(path, title=title, icon=icon, url_path=url or None, default=not url)
            for path, title, icon, url in PAGES]


# Widget values that survive a visit to another page (Streamlit drops the state of the widgets a run
# does not draw, so an experiment half set up was lost on a look at Jobs). Only widgets whose
# choices do not depend on the runs there are: a remembered value stays a valid one.
KEPT_WIDGETS = {"data_source", "dataset", "cifar_path", "data_path", "limit", "val_limit", "test_limit", "image_size",
                "batch_size", "base_kind", "arch", "base_epochs", "ck_epochs", "methods", "chain", "epochs", "device",
                "onnx", "latency_runs", "preset", "axis", "log_x", "front", "f_text", "w_size", "w_macs",
                "w_latency", "w_drop", "w_best", "img_source", "n_samples", "cam", "exp_experiment", "exp_group",
                "jobs_hide_cancelled", "exp_tab", "init_weights", "pretrained_source", "pretrained_path",
                "freeze_backbone"}
KEPT_PREFIXES = ("p.", "sweep.", "sweep_values.", "ac_")  # a method's parameters and sweeps; a search's settings


def keep_widget_state() -> None:
    """Called before every page: a widget's value written back as the app's own is kept by Streamlit."""
    for key in list(st.session_state):
        if isinstance(key, str) and (key in KEPT_WIDGETS or key.startswith(KEPT_PREFIXES)):
            st.session_state[key] = st.session_state[key]


@st.cache_resource(show_spinner=False)
def _store(root: str) -> Store:
    return Store(root)


def get_store() -> Store:
    """One Store per workspace (SLIMBENCH_HOME may differ between tests)."""
    return _store(str(store_mod.workspace_root()))


@st.cache_resource(show_spinner=False)
def device_text() -> str:
    import torch
    if torch.cuda.is_available():
        return f"CUDA: {torch.cuda.get_device_name(0)}" + (f" (+{torch.cuda.device_count() - 1})"
                                                            if torch.cuda.device_count() > 1 else "")
    import os
    return f"CPU only ({os.cpu_count()} cores)"


# Live panels poll fast while jobs are queued or running and slowly at idle: every fragment rerun
# costs Streamlit ~85 ms of CPU on the 2-core box, whatever it draws. A panel that sees the
# activity change reruns the whole page, which picks the pace again.
SIDEBAR_REFRESH_S = {True: 5.0, False: 15.0}


def queue_busy(status: dict[str, Any]) -> bool:
    return status["queued"] + status["running"] > 0


def follow_activity(busy_before: bool, status: dict[str, Any]) -> None:
    if queue_busy(status) != busy_before:
        st.rerun()


def live_sidebar() -> None:
    """The sidebar's worker/queue panel, refreshed at the pace the queue's activity calls for."""
    try:
        busy = queue_busy(jobs.worker_status(get_store()))
    except Exception:  # shown by the panel itself
        busy = False
    st.fragment(sidebar, run_every=SIDEBAR_REFRESH_S[busy])(busy)


def sidebar(busy: bool) -> None:
    s = get_store()
    with st.container():
        try:
            ws = jobs.worker_status(s)
        except Exception as e:  # a locked or damaged database must not take the page down
            st.error(f"Job queue unreadable: {md_text(e)}. Check the workspace at {md_text(s.root)}.")
            return
        follow_activity(busy, ws)
        if ws["alive"]:
            st.success(f"Worker alive · pid {ws['pid']} · {ws['backend']}", icon=":material/check_circle:")
        else:
            st.warning("No worker running; it starts when a job is launched.", icon=":material/pause_circle:")
        c1, c2 = st.columns(2)
        c1.metric("Queued", ws["queued"])
        c2.metric("Running", ws["running"])
        from views import plan  # lazy: it draws with this module's helpers
        plan.summary(s, ws["concurrency"])  # the plan launched last: its ETA, and its end announced on whichever page is open
        st.caption(f"Device: **{md_text(device_text())}**  \nWorkspace: {md_text(s.root)}")


# Every ASCII punctuation character: Markdown (and Streamlit's additions, `:red[...]`, `:material/..:`,
# `$math$`) is made of them, and CommonMark shows each one literally when a backslash precedes it.
_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def md_text(value: Any) -> str:
    """``value`` (a user's class, file, job or run name, a note, an error) as literal text inside
    Markdown: ``![x](http://…)`` shows as those characters and fetches nothing, ``[a](javascript:…)``
    is no link, ``www.x.com`` no autolink, a newline no new block. Use it wherever such text meets
    st.markdown / st.write / st.info / st.error / st.caption / st.success / widget labels and help."""
    text = " ".join(str(value).split())  # newlines and tabs would start headings, lists, code blocks
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", text)


# What a full-width multiselect shows of an option at an 800 px window with the sidebar open: its list clips a
# longer name at its edge (no ellipsis, no tooltip), and a selected chip cuts it short.
OPTION_CHARS = 48


def elide(text: Any, n: int = OPTION_CHARS) -> str:
    """``text`` cut to ``n`` characters in the middle, so both ends (where names tend to differ) stay readable:
    "Quick tour on Fashion-MNIST 16 px: … its control, December"."""
    text = " ".join(str(text).split())
    if len(text) <= n:
        return text
    room = n - 3                                   # " … "
    head, tail = text[:(room + 1) // 2], text[len(text) - room // 2:]
    # end on whole words where that costs at most a third of a side: the ends tell similar names apart
    if text[len(head)] != " " and head.rfind(" ") > len(head) * 2 // 3:
        head = head[:head.rfind(" ")]
    if text[len(text) - len(tail) - 1] != " " and 0 <= tail.find(" ") < len(tail) // 3:
        tail = tail[tail.find(" ") + 1:]
    return f"{head.rstrip()} … {tail.lstrip()}"


def full_names_help(what: str, names: Any, n: int = OPTION_CHARS) -> str | None:
    """A widget's help listing in full the ``names`` that ``elide`` cuts short (None when none is)."""
    long = [x for x in names if len(" ".join(str(x).split())) > n]
    if not long:
        return None
    return f"{what} shortened in the list, in full:\n\n" + "\n".join(f"- {md_text(x)}" for x in long)


def plot_text(value: Any) -> Any:
    """A user's string as literal text in a Plotly label or hover: Plotly reads a subset of HTML there
    (``<a href>`` makes a live link), and shows entities as the characters they stand for."""
    import html
    return html.escape(value, quote=False) if isinstance(value, str) else value


def _number(v: Any) -> float | None:
    """A measurement as a float, or None when unmeasured (None, NaN, text, bool). numpy scalars
    count: a pandas column of sizes hands out ``numpy.int64``, which is no ``int``."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v):
        return None
    return float(v)


def short_floats(params: Any) -> Any:
    """Parameters as a reader takes them in: floats to 4 significant digits (a MAC target of 1/2.1 reads
    0.4762, not 0.47619047619047616); the job itself keeps the exact values."""
    if isinstance(params, float):
        return float(f"{params:.4g}")
    if isinstance(params, dict):
        return {k: short_floats(v) for k, v in params.items()}
    if isinstance(params, (list, tuple)):
        return [short_floats(v) for v in params]
    return params


def fmt_bytes(n: Any) -> str:
    """Decimal units (1 MB = 10^6 bytes), as the size limits on Compare and the CLI take them."""
    n = _number(n)
    if n is None:
        return "—"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def fmt_count(n: Any) -> str:
    """12_345_678 -> "12.3 M" (the exact figure is in the table and the record)."""
    n = _number(n)
    if n is None:
        return "—"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g} {unit}"
    return f"{n:g}"


def fmt_value(v: Any, spec: str, unit: str = "") -> str:
    """A recorded measurement for a metric tile: ``fmt_value(0.1234, ".3g", " ms")``; "—" when unmeasured."""
    v = _number(v)
    return "—" if v is None else f"{v:{spec}}{unit}"


def fmt_ms(v: Any) -> str:
    """A latency for a tile or a sentence in fixed notation, never "1.05e+03": "4.2 µs", "0.042 ms",
    "3.14 ms", "215 ms", "1.05 s", "1,234 s"; "—" when unmeasured."""
    v = _number(v)
    if v is None:
        return "—"
    a = abs(v)
    if a >= 1000:
        s = v / 1000
        return f"{s:.2f} s" if abs(s) < 10 else f"{s:.1f} s" if abs(s) < 100 else f"{s:,.0f} s"
    for low, spec in ((100, ".0f"), (10, ".1f"), (1, ".2f"), (0.01, ".3f")):
        if a >= low:
            return f"{v:{spec}} ms"
    if a == 0:
        return "0 ms"
    us = v * 1000
    return f"{us:.1f} µs" if abs(us) >= 1 else f"{us:.3f} µs" if abs(us) >= 0.001 else "< 0.001 µs"


# a number and its unit ("~10 s", "8 min", "50 %", "16 px") broke across lines in a narrow caption
_NUMBER_UNIT = re.compile(r"(?<=\d) (?=(?:s|ms|min|h|px|%|MB|GB|img/s|epochs?|images?|cores?)(?![\w/]))")


def keep_units(text: str) -> str:
    """``text`` with a no-break space between each number and its unit, so that a line never ends on "~10"."""
    return _NUMBER_UNIT.sub("\u00a0", text)


def plural(n: int, word: str) -> str:
    """``plural(1, "image")`` -> "1 image", ``plural(5, "image")`` -> "5 images"."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def fmt_seconds(s: Any) -> str:
    s = _number(s)
    if s is None:
        return ""
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def artifact_path(run_id: str, kind: str) -> Path | None:
    """The file for a run's artifact if it exists inside the workspace's runs folder, else None."""
    try:
        check_run_id(run_id)
    except ValueError:
        return None
    s = get_store()
    name = ARTIFACT_FILES[kind][0]
    path = (s.run_dir(run_id) / name).resolve()
    runs = s.runs_dir.resolve()
    if runs not in path.parents or not path.is_file():
        return None
    return path


def download(run_id: str, kind: str, label: str, key: str, note: str = "", missing: str = "") -> None:
    """A download button for one artifact, or a note that it does not exist; bytes read only on click.
    ``note`` (e.g. that it is not smaller than its base's) goes into its help; ``missing``: why there is none."""
    path = artifact_path(run_id, kind)
    if path is None:
        st.button(label, key=key, disabled=True, help=missing or f"this run has no {ARTIFACT_FILES[kind][0]}")
        return
    st.download_button(label, data=lambda p=path: p.read_bytes(), file_name=f"{run_id}-{path.name}",
                       mime=ARTIFACT_FILES[kind][1], key=key, on_click="ignore",
                       help=f"{path.name}, {fmt_bytes(path.stat().st_size)}" + (f". {note}" if note else ""))


# The runtime a run records as its fastest with a file to ship -> the artifact that ships it.
RUNTIME_ARTIFACTS = {"eager": ("checkpoint", "bundle (.pt)"), "onnxruntime": ("onnx", "ONNX (.onnx)"),
                     "openvino": ("openvino", "OpenVINO IR (.zip)")}


def ir_zip(xml: Path) -> bytes:
    """OpenVINO IR as one download: model.xml and its weights, model.bin, zipped."""
    import io
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in (xml, xml.with_suffix(".bin")):
            if f.is_file():
                z.write(f, f.name)
    return buf.getvalue()


def download_best(run_id: str, rec: dict[str, Any], key: str) -> None:
    """The run's model in the fastest verified runtime with a file to ship (best_artefact_runtime)."""
    runtime = rec.get("best_artefact_runtime")
    if runtime not in RUNTIME_ARTIFACTS:
        st.button("Download for the best runtime", key=key, disabled=True,
                  help="this run was not deployed in other runtimes (measure.deploy off, or an older run)")
        return
    kind, what = RUNTIME_ARTIFACTS[runtime]
    path = artifact_path(run_id, kind)
    if path is None:
        st.button(f"Download for {runtime}", key=key, disabled=True, help=f"this run has no {ARTIFACT_FILES[kind][0]}")
        return
    data = (lambda p=path: ir_zip(p)) if kind == "openvino" else (lambda p=path: p.read_bytes())
    name = f"{run_id}-openvino.zip" if kind == "openvino" else f"{run_id}-{path.name}"
    st.download_button(f"Download for {runtime}: {what}", data=data, file_name=name, mime=ARTIFACT_FILES[kind][1],
                       key=key, on_click="ignore", help="the fastest runtime here whose top-1 matched PyTorch on "
                       "≥ 99.5 % of the test images checked (the run's deploy figures)")


def run_label(row: dict[str, Any]) -> str:
    rec = row.get("record") or {}
    name = row.get("name") or rec.get("name") or row.get("method") or ""
    return f"{name} · {row['id']}"


def upload_limit_mb() -> int:
    """The largest upload the server takes (``server.maxUploadSize``, MiB); Streamlit refuses larger
    files in the browser, naming this size, before any byte reaches the server."""
    return int(st.get_option("server.maxUploadSize"))


REFUSED_UPLOADS = "refused_uploads"  # session state: uploader name -> why its last upload was refused
UPLOADER_RESETS = "uploader_resets"  # session state: uploader name -> how many times it was emptied


def uploader_key(name: str) -> str:
    """The widget key of the uploader ``name`` now: a new one after each refusal, so the refused file
    leaves the widget (and the browser's list) instead of riding along on every rerun."""
    n = st.session_state.get(UPLOADER_RESETS, {}).get(name, 0)
    return name if n == 0 else f"{name}~{n}"


def refused_upload(name: str) -> str | None:
    """Why the last upload to the uploader ``name`` was refused, shown under its emptied widget until
    another file arrives; None if it was not."""
    return st.session_state.get(REFUSED_UPLOADS, {}).get(name)


def accept_upload(name: str) -> None:
    """A new file arrived in the uploader ``name``: an earlier refusal no longer applies."""
    st.session_state.get(REFUSED_UPLOADS, {}).pop(name, None)


def discard_upload(name: str, uploaded, path: Path | None, reason: str) -> None:
    """Refuse an upload: delete it (and what was made from it) from the workspace, drop its bytes from
    the server's memory, empty the uploader ``name`` and rerun, which shows ``reason`` under it.

    Streamlit keeps an uploaded file in memory until the browser removes it from the widget: a
    refused 1 GB upload stayed resident for the whole session. Its record is dropped here (as
    st.chat_input does with its files), and the widget gets a new key so nothing refers to it."""
    import shutil

    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
    from streamlit.runtime.scriptrunner import get_script_run_ctx
    if path is not None:
        folder = path.parent  # the upload's own content-hash folder (see save_upload)
        if folder.parent.parent == get_store().root:
            shutil.rmtree(folder, ignore_errors=True)
    ctx = get_script_run_ctx()
    if ctx is not None and isinstance(ctx.uploaded_file_mgr, MemoryUploadedFileManager):
        ctx.uploaded_file_mgr.remove_file(ctx.session_id, uploaded.file_id)
    st.session_state.setdefault(REFUSED_UPLOADS, {})[name] = reason
    resets = st.session_state.setdefault(UPLOADER_RESETS, {})
    resets[name] = resets.get(name, 0) + 1
    st.rerun()


def save_upload(uploaded, folder: str = "uploads") -> Path:
    """Store an upload in the workspace under a folder named by its content's hash, keeping its own
    (sanitised) name: equal uploads share a file, and jobs show the user's file name."""
    import hashlib
    import re
    data = uploaded.getvalue()
    digest = hashlib.sha256(data).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(uploaded.name).name)[-80:].lstrip(".") or "upload"
    path = get_store().root / folder / digest / safe
    if not path.is_file():
        from engine.export import atomic_write_bytes  # lazy: engine.export loads torch; the Jobs page runs without it
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    return path


def done_runs() -> list[dict[str, Any]]:
    return get_store().list("done")


def startable_runs() -> list[dict[str, Any]]:
    """Finished runs a job can start from or learn from: PyTorch models (not INT8 ONNX Runtime ones)."""
    return [r for r in done_runs() if methods.makes_torch_model((r.get("spec") or {}).get("method") or {})]


def card(run_id: str) -> dict[str, Any]:
    """A run's model card (class names, normalisation, metrics); {} if absent or unreadable."""
    import json
    path = artifact_path(run_id, "card")
    try:
        return json.loads(path.read_text()) if path else {}
    except (OSError, ValueError):
        return {}
