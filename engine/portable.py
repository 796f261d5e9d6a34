"""A run's model as a file that plain PyTorch loads: no Slimbench, no model code.

The ``.pt`` bundle rebuilds only through ``engine.export.load_model`` (it stores a manifest and packed
weights, not code). For a download that runs anywhere, the model is also written as a
``torch.export`` program (``model.pt2``: ``torch.export.load(path).module()``), or, where export
fails on its graph, as TorchScript (``model.torchscript.pt``: ``torch.jit.load(path)``), and the
reason is kept. Either file carries ``slimbench.json`` (class names, normalisation, input size) as an
extra file. It is made on first request from the bundle, checked against it on random inputs, and
kept in the run folder; ``portable.json`` says which format was made and why.
"""
from __future__ import annotations

import io
import json
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import export, layout

META_FILE = "slimbench.json"    # the extra file inside the program: how to feed the model
CHECK_BATCH = 8                 # random inputs the saved file is compared with the bundle's model on
MAX_BATCH = 4096                # the exported program's batch axis is dynamic up to this
TOLERANCE = 1e-3                # max |logit difference| (relative to the logits' scale) the saved file may show
# torch.export swaps process-wide dispatch modes while it traces: two exports at once in one process (the
# dashboard renders sessions and reruns in threads) break each other ("Trying to pop empty mode stack",
# "fake tensor in the exported program's constants") and both fell back to TorchScript. One at a time.
_MAKING = threading.Lock()


@dataclass(frozen=True)
class Portable:
    """What ``ensure`` made: ``file`` (a name in the run folder) and ``kind`` ("torch.export" or
    "TorchScript"), or neither with ``note`` saying why nothing could be made."""
    file: str | None
    kind: str | None
    note: str = ""

    def load_code(self, path: str) -> str:
        """The line that loads the file, saved as ``path``, with plain PyTorch."""
        if self.kind == "torch.export":
            return f"model = torch.export.load({path!r}).module()"
        if self.kind == "TorchScript":
            return f"model = torch.jit.load({path!r})"
        return ""


def ensure(run_dir: Path) -> Portable:
    """The run's portable model, made from its bundle on the first call and reused after that."""
    run_dir = Path(run_dir)
    done = _read_note(run_dir)
    if done is not None and (done.file is None or (run_dir / done.file).is_file()):
        return done
    if not (run_dir / layout.CHECKPOINT).is_file():
        return Portable(None, None, "this run has no checkpoint (model.pt) to convert")
    with _MAKING:
        done = _read_note(run_dir)             # made by another thread while this one waited
        if done is not None and (done.file is None or (run_dir / done.file).is_file()):
            return done
        result = make(run_dir / layout.CHECKPOINT, run_dir)
        export.atomic_write_bytes(run_dir / layout.PORTABLE_NOTE, json.dumps(asdict(result)).encode())
    return result


def _read_note(run_dir: Path) -> Portable | None:
    try:
        d = json.loads((run_dir / layout.PORTABLE_NOTE).read_text())
        return Portable(d.get("file"), d.get("kind"), str(d.get("note") or ""))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def feed_meta(bundle: dict[str, Any]) -> dict[str, Any]:
    """What a user needs to feed the model: the bundle's class names, normalisation and input size."""
    meta = bundle.get("meta") or {}
    return {"class_names": meta.get("class_names"), "mean": meta.get("mean"), "std": meta.get("std"),
            "input_size": meta.get("input_size"), "arch": bundle.get("arch"),
            "run_id": (bundle.get("extra") or {}).get("run_id"),
            "input": "float32 N x C x H x W, pixel values / 255, then (x - mean) / std per channel; "
                     "the output is one logit per class"}


def make(bundle_path: Path, out_dir: Path) -> Portable:
    """Write the bundle's model as a torch.export program, else as TorchScript, into ``out_dir``."""
    try:
        b = export.read_bundle(bundle_path)
    except export.BundleError as e:
        return Portable(None, None, f"no checkpoint to convert: {e}")
    if b.get("kind") == export.ONNX_INT8:
        return Portable(None, None, "an INT8 ONNX Runtime model holds no PyTorch graph: download its .onnx, "
                                    "which ONNX Runtime loads without Slimbench")
    try:
        model = export.model_from_bundle(b)
    except export.BundleError as e:
        return Portable(None, None, f"the checkpoint cannot be rebuilt: {e}")
    meta = feed_meta(b)
    shape = tuple(meta["input_size"] or ())
    if len(shape) != 3:
        return Portable(None, None, "the checkpoint records no input size to trace the model at")
    g = torch.Generator().manual_seed(0)
    x = torch.randn((CHECK_BATCH, *shape), generator=g)
    extra = {META_FILE: json.dumps(meta, indent=2)}
    with torch.no_grad():
        want = model(x).float()
    try:
        data = _exported(model, x, extra)
        _check(torch.export.load(io.BytesIO(data)).module(), x, want)
    except Exception as e:  # export fails on some rewritten graphs; TorchScript then traces the same forward
        why = f"torch.export failed ({_first_line(e)}), so this is TorchScript"
    else:
        export.atomic_write_bytes(out_dir / layout.PT2, data)
        return Portable(layout.PT2, "torch.export")
    try:
        data = _scripted(model, x, extra)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.load(io.BytesIO(data))
        _check(scripted, x, want)
    except Exception as e:
        return Portable(None, None, f"{why.removesuffix(', so this is TorchScript')}; TorchScript failed too "
                                    f"({_first_line(e)})")
    export.atomic_write_bytes(out_dir / layout.TORCHSCRIPT, data)
    return Portable(layout.TORCHSCRIPT, "TorchScript", why)


def _exported(model: nn.Module, x: torch.Tensor, extra: dict[str, str]) -> bytes:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files=extra)
    return buf.getvalue()


def _scripted(model: nn.Module, x: torch.Tensor, extra: dict[str, str]) -> bytes:
    # TorchScript is deprecated in favour of torch.export; it is only the fallback where export failed.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, (x,), check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files=extra)
    return buf.getvalue()


def _check(loaded: Any, x: torch.Tensor, want: torch.Tensor) -> None:
    """The saved model gives the bundle's answers: same top-1, logits within ``TOLERANCE``; and it
    takes a batch of another size (the batch axis is not frozen at the traced size)."""
    with torch.no_grad():
        got = loaded(x).float()
        one = loaded(x[:1]).float()
    scale = max(1.0, want.abs().max().item())
    diff = max((got - want).abs().max().item(), (one - want[:1]).abs().max().item()) / scale
    if not torch.equal(got.argmax(1), want.argmax(1)) or diff > TOLERANCE:
        raise ValueError(f"the saved model's logits differ from the checkpoint's by {diff:.2g}")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__
