"""Accuracy-limited INT8: rank layers by their quantisation error, keep the worst in FP32 until the drop fits.

The error of each quantised layer comes from ONNX Runtime's QDQ debugging tools
(``onnxruntime.quantization.qdq_loss_debug``): the signal-to-quantisation-noise ratio (SQNR, dB) of its
weights and of its input activation, each quantised alone. A layer's score is the lower of the two
(its noisiest tensor). The search keeps the 1, 2, 4, ... noisiest layers in FP32 until the drop on the
validation split fits, then bisects between the last two counts for the fewest that do (the drop
is close to monotone in the count); a limit that no count meets keeps the smallest drop seen.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import int8_formats


def layer_sqnr(fp32_path: Path, qdq_path: Path, reader: int8_formats.Calibration) -> dict[str, float]:
    """Node name -> SQNR (dB, lower: more sensitive) of the node's noisier tensor, weight or input, in the
    QDQ model ``qdq_path`` made from ``fp32_path``; activations over ``reader``'s batches."""
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as dbg
    weight_err = dbg.compute_weight_error(dbg.create_weight_matching(str(fp32_path), str(qdq_path)))
    feeds = [{reader.input_name: a} for a in reader.arrays()]
    with tempfile.TemporaryDirectory(dir=qdq_path.parent) as tmp:
        acts = {}
        for kind, path in (("float", fp32_path), ("qdq", qdq_path)):
            aug = Path(tmp) / f"{kind}.onnx"
            dbg.modify_model_output_intermediate_tensors(str(path), str(aug))
            acts[kind] = dbg.collect_activations(str(aug), feeds)
    act_err = dbg.compute_activation_error(dbg.create_activation_matching(acts["qdq"], acts["float"]))
    out: dict[str, float] = {}
    for node in onnx.load(str(fp32_path), load_external_data=False).graph.node:
        if node.op_type not in int8_formats.QUANTIZABLE_OPS:
            continue
        scores = [weight_err.get(name) for name in node.input[1:2]]
        scores.append(act_err.get(node.input[0], {}).get("qdq_err"))
        finite = [float(s) for s in scores if s is not None and not math.isnan(float(s))]
        out[node.name] = min(finite) if finite else math.inf
    return out


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
    """What the search tried: each count of FP32 layers with its drop (points), and the choice."""
    max_drop_pt: float
    fp32_accuracy: float
    tried: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    best_bytes: bytes = b""

    @property
    def met(self) -> bool:
        return self.best is not None and self.best["drop_pt"] <= self.max_drop_pt

    def consider(self, excluded: list[str], acc: float, onnx_bytes: bytes) -> bool:
        drop = round(100 * (self.fp32_accuracy - acc), 4)
        entry = {"fp32_layers": len(excluded), "val_accuracy": acc, "drop_pt": drop}
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
                "val_int8_accuracy": self.best["val_accuracy"], "val_drop_pt": self.best["drop_pt"],
                "kept_fp32": self.best["kept_fp32"], "tried": self.tried}


def search(make: Callable[[list[str]], bytes], score: Callable[[bytes], float], order: list[str],
           fp32_accuracy: float, max_drop_pt: float, cancelled: Callable[[], bool] = lambda: False) -> Search:
    """Fewest of ``order``'s first layers kept FP32 (``make(excluded)`` -> INT8 bytes, ``score`` -> val
    accuracy) so that the drop from ``fp32_accuracy`` is at most ``max_drop_pt`` points."""
    s = Search(max_drop_pt, fp32_accuracy)

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
