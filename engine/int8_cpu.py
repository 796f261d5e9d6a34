"""What this CPU can do with INT8, read from /proc/cpuinfo's flags, and which INT8 format that favours.

ONNX Runtime's U8S8 kernels (uint8 activations x int8 weights) use VPMADDUBSW on AVX2 and AVX-512
without VNNI, which adds pairs of products into int16 and can saturate: there, quantised models lose
accuracy unless weights keep 7 bits (``reduce_range``) or activations are int8 too (S8S8). VNNI
(AVX-512 or AVX) and AMX accumulate in int32 and do not saturate, so full-range U8S8 is exact there.
A measured run on an AVX2-only CPU (issue 20) found OpenVINO + NNCF the only INT8 both fast and
faithful; ``auto`` tries it first wherever OpenVINO is installed on such a CPU, and keeps the first
format whose validation agreement with FP32 reaches 97 % (methods.int8_auto).
"""
from __future__ import annotations

import functools
import importlib.util
import platform
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")


def flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The first processor's feature flags (empty where /proc/cpuinfo is absent or unreadable)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def capability(cpu_flags: set[str]) -> dict[str, Any]:
    """The CPU's INT8 level ("amx", "vnni", "avx512", "avx2", "none") and what it implies."""
    if "amx_int8" in cpu_flags:
        level, note = "amx", ("AMX INT8 tiles and VNNI: U8S8 without saturation; OpenVINO and ONNX Runtime both "
                              "use the int8 matrix units")
    elif cpu_flags & {"avx512_vnni", "avx_vnni", "avx_vnni_int8"}:
        level, note = "vnni", "VNNI dot products accumulate in int32: U8S8 at full range is exact and fastest"
    elif "avx512bw" in cpu_flags:
        level, note = "avx512", ("AVX-512 without VNNI: U8S8 can saturate (VPMADDUBSW); use reduce_range, S8S8 "
                                 "or OpenVINO")
    elif "avx2" in cpu_flags:
        level, note = "avx2", ("AVX2 only: U8S8 can saturate (VPMADDUBSW adds pairs into int16), which cost "
                               "accuracy; use reduce_range (7-bit weights), S8S8, or OpenVINO + NNCF")
    else:
        level, note = "none", "no x86 SIMD INT8 instructions found: INT8 may not be faster than FP32 here"
    return {"level": level, "note": note, "machine": platform.machine(),
            "flags": sorted(cpu_flags & {"avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"})}


def openvino_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("openvino", "nncf"))


def speed_order(level: str, openvino: bool) -> list[str]:
    """The INT8 formats worth trying on a CPU of INT8 ``level``, fastest first (from measured runs: issue 20 on
    AVX2, ``python -m bench int8`` / ``runtimes`` on VNNI + AMX). ``qoperator`` is left out: 4x slower than
    FP32 where measured. Without VNNI, full-range U8S8 (``qdq``) saturates; it is tried after the 7-bit
    ``qdq_reduce_range``, which runs the same kernels at the same speed (0.98-0.99x)."""
    ov = ["openvino"] if openvino else []
    if level in ("avx2", "avx512", "none"):
        return [*ov, "qdq_reduce_range", "qdq", "qdq_s8s8"]
    # VNNI / AMX: ONNX Runtime's full-range U8S8 neither saturates nor loses speed
    return ["qdq", "qdq_reduce_range", *ov, "qdq_s8s8"]


def default_format(level: str, openvino: bool) -> str:
    """The fastest INT8 format on a CPU of INT8 ``level``: the first that ``format: auto`` tries."""
    return speed_order(level, openvino)[0]


@functools.lru_cache(maxsize=1)
def this_cpu() -> dict[str, Any]:
    cap = capability(flags())
    return {**cap, "auto_format": default_format(cap["level"], openvino_available())}
