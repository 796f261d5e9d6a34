"""Accuracy-limited INT8: rank layers by their quantisation error, keep the worst in FP32 until the drop fits.

Each quantised layer's error is the signal-to-quantisation-noise ratio (SQNR, dB) of its output when it
alone is quantised as the INT8 model quantises it (input, weight and bias), fed the FP32 model's input
activations (what ONNX Runtime's ``qdq_loss_debug`` compares tensor by tensor, here per layer output). The search keeps the 1, 2, 4, ... noisiest layers in FP32 until the drop on the
validation split fits, then bisects between the last two counts for the fewest that do (the drop
is close to monotone in the count); a limit that no count meets keeps the smallest drop seen.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import int8_formats


def layer_sqnr(fp32_path: Path, qdq_path: Path, reader: int8_formats.Calibration) -> dict[str, float]:
    """Node name -> SQNR (dB; lower: more sensitive) of each quantised layer's output when that layer alone is
    quantised as the QDQ model ``qdq_path`` quantises it (its input, weight and bias through their Q/DQ
    pairs), fed the FP32 model's own input activations over ``reader``'s batches. Local: one layer's error,
    not what it inherits from the layers before it. A weight's SQNR alone misses what matters (one outlier
    weight keeps the tensor's SQNR high while the scale it forces rounds every other weight to zero), so the
    layer's output is what is compared."""
    import onnx
    from onnx import numpy_helper
    feeds = [{reader.input_name: a} for a in reader.arrays()]
    qdq = onnx.load(str(qdq_path))
    producer = {o: n for n in qdq.graph.node for o in n.output}
    wanted = []
    for node in qdq.graph.node:
        if node.op_type in int8_formats.QUANTIZABLE_OPS:
            with contextlib.suppress(KeyError):
                wanted.append(_activation_quantizer(node.input[0], producer, {})[0])
    acts = _activations(fp32_path, wanted, feeds)
    consts = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    fp32_consts = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(fp32_path)).graph.initializer}
    out: dict[str, float] = {}
    for node in qdq.graph.node:
        if node.op_type not in int8_formats.QUANTIZABLE_OPS:
            continue
        try:
            x_name, fq_input = _activation_quantizer(node.input[0], producer, consts)
            w = _dequantized(node.input[1], producer, consts)
            b = _dequantized(node.input[2], producer, consts) if len(node.input) > 2 and node.input[2] else None
            w32 = _float_of(node.input[1], producer, fp32_consts)
            b32 = _float_of(node.input[2], producer, fp32_consts) if b is not None else None
        except KeyError:    # a layer left unquantised, or a pattern not read here: no error to rank it by
            out[node.name] = math.inf
            continue
        xs = acts.get(x_name)
        if not xs or w32 is None:
            out[node.name] = math.inf
            continue
        signal = noise = 0.0
        for x in xs:
            x = torch.tensor(x, dtype=torch.float32)
            ref = _apply(node, x, torch.tensor(w32, dtype=torch.float32), None if b32 is None else torch.tensor(b32, dtype=torch.float32))
            got = _apply(node, fq_input(x), torch.tensor(w, dtype=torch.float32), None if b is None else torch.tensor(b, dtype=torch.float32))
            signal += float(ref.square().sum())
            noise += float((ref - got).square().sum())
        out[node.name] = 10 * math.log10(signal / noise) if noise > 0 and signal > 0 else math.inf
    return out


def _activations(fp32_path: Path, names: list[str], feeds: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The FP32 model's tensors ``names`` (each an intermediate or the input), one array per feed."""
    import onnx
    import onnxruntime as ort
    model = onnx.load(str(fp32_path))
    inputs = {i.name for i in model.graph.input}
    shapes = {v.name: v for v in model.graph.value_info}
    extra = [n for n in dict.fromkeys(names) if n not in inputs and n not in {o.name for o in model.graph.output}]
    for n in extra:
        model.graph.output.append(shapes.get(n) or onnx.helper.make_empty_tensor_value_info(n))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    acts: dict[str, list[Any]] = {}
    for feed in feeds:
        values = dict(zip(outs, sess.run(outs, feed)))
        for n in dict.fromkeys(names):
            acts.setdefault(n, []).append(feed[n] if n in feed else values[n])
    return acts


def _float_of(name: str, producer: dict, fp32_consts: dict):
    """The FP32 value (from the FP32 file's constants) of a weight or bias the QDQ model quantised."""
    dq = producer.get(name)
    source = name
    if dq is not None and dq.op_type == "DequantizeLinear":
        source = dq.input[0]
        q = producer.get(source)
        source = q.input[0] if q is not None and q.op_type == "QuantizeLinear" else source.removesuffix("_quantized")
    return fp32_consts.get(source)


def _dequantized(name: str, producer: dict, consts: dict):
    """A constant input as the INT8 model computes with it: its DequantizeLinear applied (KeyError: none)."""
    dq = producer[name]
    if dq.op_type != "DequantizeLinear":
        raise KeyError(name)
    q, scale = consts[dq.input[0]].astype("float64"), consts[dq.input[1]].astype("float64")
    zp = consts[dq.input[2]].astype("float64") if len(dq.input) > 2 and dq.input[2] else 0.0
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if getattr(scale, "ndim", 0) == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), (zp.reshape(shape) if getattr(zp, "ndim", 0) else zp)
    return ((q - zp) * scale).astype("float32")


def _activation_quantizer(name: str, producer: dict, consts: dict):
    """(the FP32 tensor a Q/DQ pair quantises, the fake-quantiser it applies) for an activation input."""
    dq = producer[name]
    q = producer[dq.input[0]] if dq.op_type == "DequantizeLinear" else None
    if q is None or q.op_type != "QuantizeLinear":
        raise KeyError(name)
    if not consts:
        return q.input[0], None
    scale = float(consts[q.input[1]])
    zp_arr = consts[q.input[2]] if len(q.input) > 2 and q.input[2] else None
    zp = 0 if zp_arr is None else int(zp_arr)
    low, high = (-128, 127) if zp_arr is not None and zp_arr.dtype.kind == "i" else (0, 255)

    def fake(x: torch.Tensor) -> torch.Tensor:
        return (torch.clamp(torch.round(x / scale) + zp, low, high) - zp) * scale
    return q.input[0], fake


def _apply(node, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """The node's own computation in torch (Conv, ConvTranspose, Gemm, MatMul)."""
    attrs = {a.name: a for a in node.attribute}

    def ints(key: str, default):
        return list(attrs[key].ints) if key in attrs else default
    if node.op_type in ("Conv", "ConvTranspose"):
        dims = w.dim() - 2
        pads = ints("pads", [0] * 2 * dims)
        if pads[:dims] != pads[dims:]:
            x = torch.nn.functional.pad(x, [p for i in reversed(range(dims)) for p in (pads[i], pads[i + dims])])
            pads = [0] * 2 * dims
        kw = dict(stride=ints("strides", [1] * dims), padding=pads[:dims], dilation=ints("dilations", [1] * dims),
                  groups=attrs["group"].i if "group" in attrs else 1)
        fn = {("Conv", 1): torch.nn.functional.conv1d, ("Conv", 2): torch.nn.functional.conv2d,
              ("Conv", 3): torch.nn.functional.conv3d, ("ConvTranspose", 1): torch.nn.functional.conv_transpose1d,
              ("ConvTranspose", 2): torch.nn.functional.conv_transpose2d}[(node.op_type, dims)]
        return fn(x, w, b, **kw)
    if node.op_type == "Gemm":
        if "transA" in attrs and attrs["transA"].i:
            x = x.t()
        if "transB" in attrs and attrs["transB"].i:
            w = w.t()
        y = (attrs["alpha"].f if "alpha" in attrs else 1.0) * (x @ w)
        return y if b is None else y + (attrs["beta"].f if "beta" in attrs else 1.0) * b
    return x @ w


def ranked(sqnr: dict[str, float]) -> list[str]:
    """Layer names, the most sensitive (lowest SQNR) first; ties in graph order."""
    order = {name: i for i, name in enumerate(sqnr)}
    return sorted(sqnr, key=lambda n: (sqnr[n], order[n]))


@torch.no_grad()
def accuracy(fn: Callable[[torch.Tensor], torch.Tensor], data, split: str = "val") -> float:
    """Top-1 accuracy of ``fn`` (batch -> logits) on ``split``, run on the CPU."""
    right = total = 0
    for x, y in data.loader(split, "cpu", train=False):
        right += int((fn(x).argmax(1) == y).sum())
        total += len(y)
    return right / max(1, total)


@dataclass
class Search:
    """What the search tried: each count of FP32 layers with its drop (points), and the choice. ``metric``
    names the score: ``accuracy`` (the drop from the FP32 model's), or ``agreement`` with the FP32 model's
    top-1 (``fp32_accuracy`` 1.0: the drop is the share of answers that changed)."""
    max_drop_pt: float
    fp32_accuracy: float
    metric: str = "accuracy"
    tried: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    best_bytes: bytes = b""

    @property
    def met(self) -> bool:
        return self.best is not None and self.best["drop_pt"] <= self.max_drop_pt

    def consider(self, excluded: list[str], acc: float, onnx_bytes: bytes) -> bool:
        drop = round(100 * (self.fp32_accuracy - acc), 4)
        entry = {"fp32_layers": len(excluded), f"val_{self.metric}": acc, "drop_pt": drop}
        self.tried.append(entry)
        better = (self.best is None or (drop <= self.max_drop_pt and
                                        (self.best["drop_pt"] > self.max_drop_pt or len(excluded) < len(self.best["kept_fp32"])))
                  or (self.best["drop_pt"] > self.max_drop_pt and drop < self.best["drop_pt"]))
        if better:
            self.best, self.best_bytes = {**entry, "kept_fp32": list(excluded)}, onnx_bytes
        return drop <= self.max_drop_pt

    def summary(self) -> dict[str, Any]:
        assert self.best is not None
        return {"max_drop_pt": self.max_drop_pt, "met": self.met, "val_fp32_accuracy": self.fp32_accuracy,
                "val_int8_accuracy": self.best[f"val_{self.metric}"], "val_drop_pt": self.best["drop_pt"],
                "kept_fp32": self.best["kept_fp32"], "tried": self.tried}


def search(make: Callable[[list[str]], bytes], score: Callable[[bytes], float], order: list[str],
           fp32_accuracy: float, max_drop_pt: float, cancelled: Callable[[], bool] = lambda: False,
           metric: str = "accuracy") -> Search:
    """Fewest of ``order``'s first layers kept FP32 (``make(excluded)`` -> INT8 bytes, ``score`` -> val
    ``metric``) so that the drop from ``fp32_accuracy`` is at most ``max_drop_pt`` points."""
    s = Search(max_drop_pt, fp32_accuracy, metric)

    def attempt(k: int) -> bool:
        b = make(order[:k])
        return s.consider(order[:k], score(b), b)

    if attempt(0):
        return s
    counts = [2 ** i for i in range(len(order).bit_length()) if 2 ** i < len(order)] + [len(order)]
    low = 0                        # a count known to miss
    for k in counts:
        if cancelled():
            break
        if attempt(k):
            while k - low > 1 and not cancelled():  # bisect for the fewest that fit
                mid = (low + k) // 2
                if attempt(mid):
                    k = mid
                else:
                    low = mid
            break
        low = k
    return s
