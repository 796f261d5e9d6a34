"""Bring your own ONNX model: measured, quantised to INT8, compared across runtimes and tried on images.

An ``.onnx`` file becomes a bundle of kind ``onnx-fp32`` (``to_bundle``): the graph's one image input and
its logits output are read from the graph, and the user states how its inputs were normalised (as for
imported state dicts: the graph cannot tell). What the graph does not fix is handled where it can be:
a dynamic batch is used as is, a batch fixed at 1 is fed one image at a time, a dynamic height and width
take the job's image size. What cannot work is refused, naming what and why: several inputs, inputs
that are not float32 images N x 3 x H x W, a fixed batch above 1, weights in external files.

A job starting from such a bundle gets an :class:`OnnxModel`, a ``runtimes.Runtime`` that ONNX Runtime
runs on the CPU. Its parameters are the graph's float initialisers and its MACs those of its Conv,
Gemm and MatMul nodes (shape inference at the job's input size), so Compare ranks it on every axis.
Methods that change PyTorch weights cannot run on it (:data:`METHODS` lists those that can).
"""
from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import export, measure, training

ONNX_FP32 = export.ONNX_FP32
# What runs on an ONNX model: scored and measured as given (baseline with no training), INT8, and the
# runtime comparison (ONNX Runtime on the CPU and, where present, CUDA).
METHODS = ("baseline", "quantize_int8", "runtime")
WHY_NOT = ("needs PyTorch weights, and an ONNX model has none to train or reshape: start from a PyTorch model "
           "(a checkpoint, your own architecture or a trained run) for it")


class OnnxModelError(export.BundleError):
    """An ONNX file that cannot be used, with the reason."""


@dataclass(frozen=True)
class Info:
    input_name: str
    batch: int | None          # None: dynamic
    channels: int
    size: tuple[int, int] | None   # (H, W); None: dynamic
    num_classes: int | None    # None: dynamic in the graph (found by running it)
    opset: int

    def describe(self) -> str:
        batch = "dynamic batch" if self.batch is None else f"batch fixed at {self.batch} (fed one image at a time)"
        size = f"{self.size[0]}x{self.size[1]}" if self.size else "any height and width (the job's image size)"
        classes = f"{self.num_classes} classes" if self.num_classes else "classes read by running it"
        return f"input {self.input_name!r}: {self.channels} x {size}, {batch}; output: {classes}; opset {self.opset}"


def read(data: bytes, name: str) -> Info:
    """The graph's image input and logits output, or a refusal naming what the model takes instead."""
    import onnx
    try:
        model = onnx.load_from_string(data)
    except Exception as e:
        raise OnnxModelError(f"{name} is not an ONNX model ({_one_line(e)})") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise OnnxModelError(f"{name} keeps its weights in external files, which an upload does not carry: save it as "
                             "one file (onnx.save(model, path, save_as_external_data=False))")
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise OnnxModelError(f"{name} fails ONNX's model check: {_one_line(e)}") from None
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) != 1:
        raise OnnxModelError(f"{name} takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); an image "
                             "classifier takes one batch of images")
    inp = inputs[0]
    tensor = inp.type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        raise OnnxModelError(f"{name}'s input {inp.name!r} is {onnx.TensorProto.DataType.Name(tensor.elem_type)}; "
                             "Slimbench feeds float32 images normalised as you state (a model taking raw uint8 "
                             "pixels or float16 needs its conversion inside the graph removed, or a Cast added)")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if len(dims) != 4:
        raise OnnxModelError(f"{name}'s input {inp.name!r} has {len(dims)} dimensions {_dims(dims)}; an image "
                             "classifier takes N x C x H x W")
    batch, channels, h, w = dims
    if channels != 3:
        raise OnnxModelError(f"{name}'s input {inp.name!r} has {channels or 'a dynamic number of'} channels "
                             f"{_dims(dims)}; Slimbench feeds 3-channel images (grey ones repeated), N x 3 x H x W")
    if batch is not None and batch != 1:
        raise OnnxModelError(f"{name}'s input {inp.name!r} has a batch fixed at {batch} {_dims(dims)}; export it with "
                             "a dynamic batch (or a batch of 1)")
    if (h is None) != (w is None):
        raise OnnxModelError(f"{name}'s input {inp.name!r} fixes one side of the image and not the other {_dims(dims)}")
    out = model.graph.output[0].type.tensor_type
    odims = [d.dim_value if d.HasField("dim_value") else None for d in out.shape.dim]
    if len(odims) != 2:
        raise OnnxModelError(f"{name}'s output {model.graph.output[0].name!r} has {len(odims)} dimensions "
                             f"{_dims(odims)}; a classifier answers N x classes (logits)")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return Info(inp.name, batch, channels, (h, w) if h else None, odims[1], opset)


def _dims(dims: list[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def to_bundle(path: str | Path, *, norm: dict[str, Any], input_size: int | None = None,
              class_names: list[str] | None = None) -> dict[str, Any]:
    """An ``onnx-fp32`` bundle of the ONNX file at ``path``; ``norm``: ``import_weights.normalisation``'s
    metadata; ``input_size``: the image side where the graph leaves it dynamic."""
    path = Path(path)
    data = path.read_bytes()
    info = read(data, path.name)
    size = info.size
    if size and input_size and size != (input_size, input_size):
        raise OnnxModelError(f"{path.name} takes {size[0]}x{size[1]} images, not {input_size}x{input_size}")
    if not size and input_size:
        size = (input_size, input_size)
    classes = info.num_classes
    if classes is None:
        if not size:
            raise OnnxModelError(f"{path.name} leaves both its image size and its class count dynamic: give the "
                                 "image side it takes (--input-size) so that its class count can be read by running it")
        classes = int(_runner(data, path.name)(torch.zeros(1, 3, *size)).shape[1])
    if classes < 2:
        raise OnnxModelError(f"{path.name} answers {classes} value(s) per image; a classifier answers one per class")
    meta = {**norm, "onnx_input": info.describe()}
    if size:
        meta["input_size"] = [3, *size]
    if class_names is not None:
        if len(class_names) != classes:
            raise OnnxModelError(f"{len(class_names)} class names given for a model with {classes} outputs")
        meta["class_names"] = list(class_names)
    return export.make_onnx_bundle(data, arch=path.name, num_classes=classes, small_input=False, meta=meta,
                                   kind=ONNX_FP32, extra={"imported_from": path.name,
                                                          "imported_sha256": hashlib.sha256(data).hexdigest()})


def _runner(data: bytes, name: str, threads: int | None = None) -> export.OnnxRunner:
    try:
        return export.OnnxRunner(data, threads=threads)
    except Exception as e:
        raise OnnxModelError(f"ONNX Runtime cannot load {name}: {_one_line(e)}") from None


def static_metrics(data: bytes, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Parameters (float initialisers), their sparsity, and MACs of Conv / Gemm / MatMul for one image."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load_from_string(data)
    floats = [numpy_helper.to_array(t) for t in model.graph.initializer
              if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)]
    params = int(sum(a.size for a in floats))
    nonzero = int(sum(np.count_nonzero(a) for a in floats))
    per_node = [n for _, n in _macs_by_node(model, input_shape)]
    macs, counted = sum(n or 0 for n in per_node), None not in per_node
    out = {"params": params, "nonzero_params": nonzero, "sparsity": 1 - nonzero / params if params else 0.0}
    if counted:
        out.update(macs=int(macs), flops=int(2 * macs), sparse_macs=int(macs))
    return out


def node_macs(data: bytes, input_shape: tuple[int, ...]) -> dict[str, int | None]:
    """Node name -> its multiply-accumulates for one image (0: an op that does none; None: shapes unknown)."""
    import onnx
    return dict(_macs_by_node(onnx.load_from_string(data), input_shape))


def _macs_by_node(model, input_shape: tuple[int, ...]) -> list[tuple[str, int | None]]:
    from onnx import shape_inference
    inp = next(i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
    for d, v in zip(inp.type.tensor_type.shape.dim, (1, *input_shape)):
        d.ClearField("dim_param")
        d.dim_value = v
    shapes = {}
    try:
        inferred = shape_inference.infer_shapes(model)
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
            shapes[vi.name] = dims
    except Exception:  # counted where shapes are known; a graph that defeats inference counts none
        pass
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    return [(node.name or f"#{i}", _node_macs(node, shapes, inits)) for i, node in enumerate(model.graph.node)]


def _node_macs(node, shapes: dict[str, list], inits: dict[str, list]) -> int | None:
    """A node's multiply-accumulates at batch 1; None where its shapes are unknown."""
    def shape(name: str) -> list | None:
        s = shapes.get(name) or inits.get(name)
        return s if s and all(isinstance(d, int) and d > 0 for d in s) else None
    if node.op_type == "Conv":
        out, w = shape(node.output[0]), shape(node.input[1])
        return None if out is None or w is None else math.prod(out) * math.prod(w[1:])
    if node.op_type in ("Gemm", "MatMul"):
        a, out = shape(node.input[0]), shape(node.output[0])
        if a is None or out is None:
            return None
        trans_a = any(at.name == "transA" and at.i for at in node.attribute)
        k = a[-2] if trans_a and len(a) >= 2 else a[-1]
        return math.prod(out) * k
    return 0


class OnnxModel:
    """An fp32 ONNX model as a ``runtimes.Runtime``: it predicts and is timed on the CPU under ONNX
    Runtime and saves an ``onnx-fp32`` bundle; it has no PyTorch graph (``module`` None), so its
    parameters and MACs are counted on the ONNX graph (:meth:`static_metrics`)."""

    device = torch.device("cpu")
    module = None
    training = False

    def __init__(self, onnx_bytes: bytes, bundle: dict[str, Any], threads: int | None = None):
        self.onnx_bytes, self.bundle = onnx_bytes, bundle
        self.runner = _runner(onnx_bytes, str(bundle.get("arch")), measure.timing_threads(threads))

    @classmethod
    def from_bundle(cls, b: dict[str, Any], threads: int | None = None) -> "OnnxModel":
        if not isinstance(b.get("onnx"), torch.Tensor) or b["onnx"].dtype != torch.uint8:
            raise OnnxModelError("the ONNX bundle holds no ONNX model")
        return cls(b["onnx"].numpy().tobytes(), b, threads)

    def eval(self) -> "OnnxModel":
        return self

    def train(self, mode: bool = True) -> "OnnxModel":
        return self

    def to(self, device: Any) -> "OnnxModel":
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x)

    def predict(self, data, cancelled: Callable[[], bool]) -> tuple[torch.Tensor, torch.Tensor]:
        return training.predict(self, data.loader("test", self.device), self.device, cancelled)

    def static_metrics(self, input_shape: tuple[int, ...]) -> dict[str, Any]:
        return static_metrics(self.onnx_bytes, input_shape)

    def save(self, ctx, run_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
        bundle = export.make_onnx_bundle(self.onnx_bytes, arch=ctx.arch, num_classes=ctx.data.num_classes,
                                         small_input=False, meta={**ctx.data.meta(), **_kept(self.bundle)},
                                         metrics={k: metrics[k] for k in ("accuracy", "top5", "roc_auc")},
                                         kind=ONNX_FP32, extra={"run_id": ctx.run_id, "method": ctx.spec.method.name,
                                                                "parent": ctx.spec.model.from_run,
                                                                **(self.bundle.get("extra") or {})})
        path = run_dir / "model.pt"
        size = export.save_bundle(bundle, path)
        export.atomic_write_bytes(run_dir / "model.onnx", self.onnx_bytes)
        return {"checkpoint": str(path), "size_bytes": size, "onnx": str(run_dir / "model.onnx"),
                "onnx_bytes": len(self.onnx_bytes), "precision": "fp32", "runtime": "onnxruntime CPU (fp32)"}

    def timing(self, device: str) -> "OnnxModel | None":
        return self if device == "cpu" else None

    def reference(self) -> None:
        return None


def _kept(bundle: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in (bundle.get("meta") or {}).items() if k == "onnx_input"}


def bundle_bytes(onnx_bytes: bytes, ctx) -> int:
    """Size of the fp32 ONNX bundle of these bytes: what its INT8 model is compared with."""
    b = export.make_onnx_bundle(onnx_bytes, arch=ctx.arch, num_classes=ctx.data.num_classes, small_input=False,
                                meta=ctx.data.meta(), kind=ONNX_FP32)
    buf = io.BytesIO()
    torch.save(b, buf)
    return buf.getbuffer().nbytes


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__
