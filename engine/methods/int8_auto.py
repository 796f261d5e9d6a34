"""``format: auto``: the fastest INT8 format on this CPU whose top-1 answers agree with the FP32 model's on the
validation split at least ``AGREEMENT_FLOOR`` of the time.

The candidates are tried fastest first (``int8_cpu.speed_order``: measured orders, not timed again per run, so
a loaded machine cannot reorder them), each quantised and scored on the validation images, and the first that
meets the floor is kept. Where none does, ``keep_fp32`` keeps the most sensitive layers of each format in FP32
(int8_accuracy's ranking and search, scored by agreement) until the floor is met, and keeps the model that
meets it with the fewest MACs left in FP32 (ties: the faster format). Where no count of FP32 layers meets it
either, the most faithful model found is kept, and the record says so.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .. import int8_cpu
from . import int8_accuracy, int8_formats

AGREEMENT_FLOOR = 0.97     # issue 20's target: INT8 top-1 equal to its FP32 model's on >= 97 % of images


def candidates(calibration: str, cpu: dict[str, Any] | None = None, openvino: bool | None = None) -> list[str]:
    """The formats ``auto`` tries on this CPU, fastest first, that take ``calibration``."""
    cpu = cpu or int8_cpu.this_cpu()
    openvino = int8_cpu.openvino_available() if openvino is None else openvino
    order = int8_cpu.speed_order(cpu["level"], openvino)
    return [f for f in order if not (f == "openvino" and calibration == "entropy")]


@torch.no_grad()
def top1(fn: Callable[[torch.Tensor], torch.Tensor], data, split: str = "val") -> torch.Tensor:
    """``fn``'s top-1 class for every image of ``split``, run on the CPU."""
    tops = [fn(x).argmax(1) for x, _ in data.loader(split, "cpu", train=False)]
    return torch.cat(tops) if tops else torch.zeros(0, dtype=torch.long)


@dataclass
class Choice:
    format: str
    agreement: float | None
    reason: str
    tried: list[dict[str, Any]] = field(default_factory=list)
    onnx_bytes: bytes = b""
    kept_fp32: list[str] = field(default_factory=list)   # layers left FP32 to meet the floor (keep_fp32)
    fp32_mac_share: float | None = None                  # their share of the model's MACs
    searches: list[dict[str, Any]] = field(default_factory=list)   # keep_fp32's search per format
    made: dict[str, bytes] = field(default_factory=dict, repr=False)   # each format's all-INT8 model

    def summary(self) -> dict[str, Any]:
        out = {"format": self.format, "val_agreement": self.agreement, "floor": AGREEMENT_FLOOR,
               "reason": self.reason, "tried": self.tried}
        if self.searches:
            out.update(kept_fp32=self.kept_fp32, fp32_mac_share=self.fp32_mac_share, keep_fp32=self.searches)
        return out


def choose(order: list[str], make: Callable[[str], bytes], fp32_top1: torch.Tensor,
           predict: Callable[[bytes, str], torch.Tensor], floor: float = AGREEMENT_FLOOR) -> Choice:
    """Try ``order`` (fastest first): ``make(fmt)`` -> INT8 bytes, ``predict(bytes, fmt)`` -> its validation
    top-1; keep the first whose agreement with ``fp32_top1`` is at least ``floor``, else the most faithful."""
    tried: list[dict[str, Any]] = []
    made: dict[str, bytes] = {}
    best: Choice | None = None
    for fmt in order:
        raw = made[fmt] = make(fmt)
        agree = float((predict(raw, fmt) == fp32_top1).double().mean()) if len(fp32_top1) else None
        tried.append({"format": fmt, "val_agreement": agree})
        if agree is None:   # no validation images: nothing to choose by, keep the fastest
            return Choice(fmt, None, f"{fmt}: the fastest here; no validation images to check its agreement on",
                          tried, raw)
        if best is None or agree > (best.agreement or 0.0):
            best = Choice(fmt, agree, "", tried, raw)
        if agree >= floor:
            faster = [t["format"] for t in tried[:-1]]
            why = (f"{fmt}: the fastest format on this CPU ({int8_cpu.this_cpu()['level']}) and its validation "
                   f"agreement {agree:.1%} meets the {floor:.0%} floor" if not faster else
                   f"{fmt}: the fastest format whose validation agreement ({agree:.1%}) meets the {floor:.0%} "
                   f"floor; faster {', '.join(faster)} agreed less")
            return Choice(fmt, agree, why, tried, raw, made=made)
    assert best is not None, "no candidate formats"
    best.made = made
    scores = ", ".join(f"{t['format']} {t['val_agreement']:.1%}" for t in tried)
    best.reason = (f"{best.format}: no format reached the {floor:.0%} agreement floor on the validation split "
                   f"({scores}); kept the most faithful")
    return best


def runner_top1(data) -> Callable[[bytes, str], torch.Tensor]:
    """``predict`` for ``choose``: an INT8 ONNX file's validation top-1 in its format's runtime, one thread."""
    return lambda raw, fmt: top1(int8_formats.runner(raw, fmt, 1), data, "val")


def keep_fp32(first: Choice, make: Callable[[str, list[str]], bytes], order_for: Callable[[str, bytes], list[str]],
              fp32_top1: torch.Tensor, predict: Callable[[bytes, str], torch.Tensor], macs: dict[str, int | None],
              floor: float = AGREEMENT_FLOOR, cancelled: Callable[[], bool] = lambda: False) -> Choice:
    """Where no format met the floor with every layer INT8 (``first``, from ``choose``): per format tried,
    keep the most sensitive layers FP32 (``order_for(fmt, its all-INT8 bytes)``: most sensitive first;
    ``make(fmt, excluded)`` -> INT8 bytes) until the validation agreement meets ``floor``
    (int8_accuracy.search). Kept: the model meeting it with the fewest MACs in FP32 (``macs``: node -> MACs),
    the faster format on a tie; where none meets it, the most faithful model found. Every search is recorded."""
    total = sum(m or 0 for m in macs.values()) or 1
    scores: dict[bytes, float] = {}

    def agreement(raw: bytes, fmt: str) -> float:   # the all-INT8 models were scored by ``choose`` already
        key = hashlib.sha256(fmt.encode() + raw).digest()
        if key not in scores:
            scores[key] = float((predict(raw, fmt) == fp32_top1).double().mean())
        return scores[key]
    for t in first.tried:
        if t["format"] in first.made and t["val_agreement"] is not None:
            scores[hashlib.sha256(t["format"].encode() + first.made[t["format"]]).digest()] = t["val_agreement"]

    searches: list[dict[str, Any]] = []
    best: tuple[tuple, Choice] | None = None
    for t in first.tried:
        fmt = t["format"]
        if cancelled():
            break
        all_int8 = first.made.get(fmt) or make(fmt, [])

        def make_fmt(excluded: list[str], fmt: str = fmt, all_int8: bytes = all_int8) -> bytes:
            return make(fmt, excluded) if excluded else all_int8
        s = int8_accuracy.search(make_fmt, lambda raw, fmt=fmt: agreement(raw, fmt), order_for(fmt, all_int8),
                                 1.0, round(100 * (1 - floor), 6), cancelled, metric="agreement")
        kept, agree = s.best["kept_fp32"], s.best["val_agreement"]
        share = sum(macs.get(n) or 0 for n in kept) / total
        searches.append({"format": fmt, "met": s.met, "val_agreement": agree, "kept_fp32": kept,
                         "fp32_mac_share": share, "tried": s.tried})
        rank = (0, share) if s.met else (1, -agree)   # met first, then fewest FP32 MACs; else the most faithful
        if best is None or rank < best[0]:
            best = (rank, Choice(fmt, agree, "", first.tried, s.best_bytes, kept, share))
    if best is None:   # cancelled before any search: what ``choose`` kept
        return first
    c = best[1]
    c.searches, c.made = searches, first.made
    scores_txt = ", ".join(f"{t['format']} {t['val_agreement']:.1%}" for t in first.tried)
    searched = "; ".join(f"{x['format']} {x['val_agreement']:.1%} with {len(x['kept_fp32'])} FP32 "
                         f"({x['fp32_mac_share']:.1%} of MACs)" for x in searches)
    if c.agreement >= floor:
        c.reason = (f"{c.format} with {len(c.kept_fp32)} layer(s) kept FP32 ({c.fp32_mac_share:.1%} of the MACs): "
                    f"no format reached the {floor:.0%} agreement floor with every layer INT8 ({scores_txt}); "
                    f"keeping the layers with the largest quantisation error (lowest SQNR) in FP32, "
                    f"{c.format} reached {c.agreement:.1%} with the fewest FP32 MACs ({searched})")
    else:
        c.reason = (f"{c.format}: the {floor:.0%} agreement floor was not reached, neither with every layer INT8 "
                    f"({scores_txt}) nor with the most sensitive layers kept FP32 ({searched}); kept the most "
                    f"faithful, {c.agreement:.1%} with {len(c.kept_fp32)} layer(s) FP32")
    return c
