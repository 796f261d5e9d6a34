"""``python -m bench int8``: the "INT8 formats" table. Slimbench's INT8 in each format against ONNX Runtime's
``quantize_static`` defaults and OpenVINO + NNCF defaults, from one FP32 model, in one interleaved run.

Each contender is scored on the same test images (accuracy, and top-1 agreement with the FP32 PyTorch model)
and timed at batch 1 on one thread against the FP32 model in its own runtime (ONNX Runtime or OpenVINO): the
contenders and both FP32 references are timed in rounds, each round visiting every one forward then backward,
and a contender's speed-up is the median over rounds of its reference's median latency ÷ its own.
"""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from engine import export, int8_cpu, measure
from engine.accuracy_text import target_mark, target_value
from engine.methods import int8_auto, int8_formats, quantize

AGREEMENT_TARGET = 0.97
SPEEDUP_TARGET = 2.0


class _OpenVinoModel:
    """An OpenVINO model object (NNCF's own output) compiled for the CPU, as a callable."""

    def __init__(self, model, threads: int):
        import openvino as ov
        self.request = ov.Core().compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                              "INFERENCE_NUM_THREADS": threads}).create_infer_request()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.request.infer({0: x.contiguous().numpy()})[0].copy()).float()


def contenders(model: torch.nn.Module, data, tmp: Path, batches: int, threads: int,
               log: Callable[[str], None] = print) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """name -> {fn, runtime, format, reference}; and the contenders that could not be built here (why)."""
    fp32_path = tmp / "fp32.onnx"
    export.export_onnx(model, data.input_shape, fp32_path)
    fp32 = fp32_path.read_bytes()
    source, _ = int8_formats.preprocess(fp32_path, tmp / "prepped.onnx")
    ov = int8_cpu.openvino_available()
    auto = int8_cpu.this_cpu()["auto_format"]
    out: dict[str, dict[str, Any]] = {
        "FP32 (ONNX Runtime)": {"fn": export.OnnxRunner(fp32, threads=threads), "runtime": "ONNX Runtime",
                                "format": "fp32", "reference": None}}
    if ov:
        out["FP32 (OpenVINO)"] = {"fn": int8_formats.OpenVinoRunner(fp32, threads), "runtime": "OpenVINO",
                                  "format": "fp32", "reference": None}
    missing = [] if ov else ["OpenVINO + NNCF (not installed)"]
    defaults = {p.name: p.default for p in quantize.INT8_PARAMS}   # ours: as quantize_int8 makes it by default
    for fmt in int8_formats.FORMATS:
        if fmt == "openvino" and not ov:
            continue
        log(f"int8: ours, {fmt}")
        path = tmp / f"{fmt}.onnx"
        int8_formats.quantize(source, path, fmt, data, batches, defaults["calibration"], defaults["per_channel"],
                              int8_formats.first_and_last(source) if defaults["keep_first_last_fp32"] else [])
        runtime = "OpenVINO" if fmt == "openvino" else "ONNX Runtime"
        out[f"ours: {fmt}" + (" (auto tries first)" if fmt == auto else "")] = {
            "fn": int8_formats.runner(path.read_bytes(), fmt, threads), "runtime": runtime, "format": fmt,
            "reference": f"FP32 ({runtime})"}
    log("int8: ONNX Runtime quantize_static defaults")
    from onnxruntime.quantization import quantize_static
    path = tmp / "ort_defaults.onnx"
    quantize_static(str(fp32_path), str(path), int8_formats.Calibration(data, int8_formats.input_name(fp32_path),
                                                                        batches))
    out["ONNX Runtime quantize_static defaults"] = {"fn": export.OnnxRunner(path.read_bytes(), threads=threads),
                                                    "runtime": "ONNX Runtime", "format": "QDQ S8S8 per tensor",
                                                    "reference": "FP32 (ONNX Runtime)"}
    if ov:
        log("int8: OpenVINO + NNCF defaults")
        import logging

        import nncf
        import openvino
        nncf.set_log_level(logging.ERROR)
        arrays = int8_formats.Calibration(data, "x", batches).arrays()
        q = nncf.quantize(openvino.convert_model(str(fp32_path)), nncf.Dataset(arrays), subset_size=len(arrays))
        out["OpenVINO + NNCF defaults"] = {"fn": _OpenVinoModel(q, threads), "runtime": "OpenVINO",
                                           "format": "NNCF default (OpenVINO IR)", "reference": "FP32 (OpenVINO)"}
    return out, missing


@torch.no_grad()
def fidelity(model: torch.nn.Module, fns: dict[str, dict[str, Any]], data) -> dict[str, dict[str, float]]:
    """Accuracy and top-1 agreement with the FP32 PyTorch model, per contender, on the test split."""
    model = model.eval()
    right = {n: 0 for n in fns}
    agree = {n: 0 for n in fns}
    total = 0
    for x, y in data.loader("test", "cpu", train=False):
        ref = model(x).argmax(1)
        for n, c in fns.items():
            top = c["fn"](x).argmax(1)
            right[n] += int((top == y).sum())
            agree[n] += int((top == ref).sum())
        total += len(y)
    return {n: {"accuracy": right[n] / total, "agreement": agree[n] / total, "images": total} for n in fns}


def interleaved(fns: dict[str, Callable], input_shape: tuple[int, ...], rounds: int, runs: int,
                threads: int) -> dict[str, list[float]]:
    """Per contender, its median latency (s) in each round; a round visits all forward then backward."""
    x = torch.randn((1, *input_shape))
    cpu = torch.device("cpu")
    out: dict[str, list[float]] = {n: [] for n in fns}
    with measure.cpu_threads(cpu, threads):
        for f in fns.values():
            measure.time_runs(lambda: f(x), 0, 5, cpu)
        half = max(2, runs // 2)
        for _ in range(rounds):
            samples: dict[str, list[float]] = {n: [] for n in fns}
            for n in [*fns, *reversed(list(fns))]:
                samples[n].extend(measure.time_runs(lambda: fns[n](x), half, 0, cpu))
            for n in fns:
                out[n].append(statistics.median(samples[n]))
    return out


def run(model: torch.nn.Module, data, batches: int = 8, threads: int = 1, rounds: int = 7, runs: int = 40,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        fns, missing = contenders(model.to("cpu").eval(), data, Path(tmp), batches, threads, log)
        log("int8: agreement on the test set")
        fid = fidelity(model, fns, data)
        log("int8: interleaved timing")
        lat = interleaved({n: c["fn"] for n, c in fns.items()}, data.input_shape, rounds, runs, threads)
    rows = []
    for n, c in fns.items():
        row = {"name": n, "runtime": c["runtime"], "format": c["format"], **fid[n],
               "latency_ms": statistics.median(lat[n]) * 1e3}
        if c["reference"]:
            ratios = [r / s for r, s in zip(lat[c["reference"]], lat[n])]
            row.update(speedup=statistics.median(ratios), speedup_min=min(ratios), speedup_max=max(ratios))
        rows.append(row)
    return {"rows": rows, "missing": missing, "cpu": int8_cpu.this_cpu(), "threads": threads, "rounds": rounds,
            "runs": runs, "batches": batches, "batch_size": data.batch_size}


def _target(value: float | None, target: float, digits: int, unit: str = "") -> str:
    return "–" if value is None else target_mark(value, target, digits, unit)


def section(res: dict[str, Any], about: str) -> str:
    cpu = res["cpu"]
    lines = [f"### INT8 formats ({about})", "",
             f"CPU INT8 level: **{cpu['level']}** ({cpu['note']}); `format: auto` tries "
             f"**{', '.join(int8_auto.candidates('minmax', cpu))}** here, fastest first, and keeps the first whose "
             f"validation agreement with FP32 is ≥ {AGREEMENT_TARGET:.0%} at {int8_auto.CONFIDENCE:.0%} confidence (the "
             f"one-sided Wilson lower bound of its agreement). Ours: quantize_int8's defaults (percentile calibration, first and last layers FP32). Calibration: {res['batches']} training batches of {res['batch_size']}. Timed at batch 1 on "
             f"{res['threads']} thread(s), {res['rounds']} interleaved rounds of {res['runs']} calls each; speed-up: "
             f"median of per-round ratios against the FP32 model in the same runtime (min-max in brackets). "
             f"Targets: agreement with FP32 ≥ {AGREEMENT_TARGET:.0%}, speed-up ≥ {SPEEDUP_TARGET:.1f}x.", "",
             "| contender | runtime | format | top-1 | agrees with FP32 | latency (ms) | x faster than its FP32 | "
             "agreement target | speed-up target |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        sp = (f"{r['speedup']:.2f}x ({r['speedup_min']:.2f}-{r['speedup_max']:.2f})" if "speedup" in r else "–")
        ref = "speedup" in r
        lines.append(f"| {r['name']} | {r['runtime']} | {r['format']} | {r['accuracy']:.4f} | "
                     f"{target_value(100 * r['agreement'], 100 * AGREEMENT_TARGET, 1)} % | {r['latency_ms']:.3f} | {sp} | "
                     f"{_target(100 * r['agreement'], 100 * AGREEMENT_TARGET, 1, ' pt') if ref else '–'} | "
                     f"{_target(r.get('speedup'), SPEEDUP_TARGET, 2, 'x') if ref else '–'} |")
    if res["missing"]:
        lines += ["", "Not measured here: " + ", ".join(res["missing"]) + "."]
    lines += ["", f"Agreement and top-1 on {res['rows'][0]['images']:,} test images."]
    return "\n".join(lines)
