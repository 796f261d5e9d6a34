"""Lower-precision weights: static INT8 (ONNX Runtime or OpenVINO + NNCF), and fp16/bf16 for GPUs.

``quantize_int8`` exports the FP32 model to ONNX, calibrates activation ranges on training
batches, and writes an INT8 model (per-channel weight scales) in the format this CPU runs fast and
faithfully (engine.int8_cpu; methods.int8_formats), optionally keeping the layers with the largest
quantisation error in FP32 until the drop on the validation split fits (methods.int8_accuracy).
Its accuracy, file size and speed are measured on that INT8 model itself: the returned
``Int8Model`` is a ``runtimes.Runtime``, which the runner evaluates, saves and measures as it does a
PyTorch model, and which also records its top-1 agreement with its own FP32 model.
"""
from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .. import export, int8_cpu, measure, onnx_models, runtimes
from .. import training as training_mod  # the class below has a `training` flag
from ..errors import SpecError
from . import Param, equalize, int8_accuracy, int8_auto, int8_formats, register


def quantize_onnx(fp32_path: Path, out_path: Path, data, batches: int, fmt: str, per_channel: bool,
                  calibration: str = "minmax", exclude: tuple[str, ...] = ()) -> str | None:
    """Static INT8 of the FP32 ONNX file in ``fmt``; returns why the optional pre-processing was skipped, or None."""
    source, skipped = int8_formats.preprocess(fp32_path, fp32_path.with_name("prepped.onnx"))
    int8_formats.quantize(source, out_path, fmt, data, batches, calibration, per_channel, exclude)
    return skipped


def bundle_bytes(model: nn.Module, ctx) -> int:
    """Size of the FP32 bundle the same model would have: what INT8 is compared with."""
    b = export.make_bundle(model.to("cpu"), arch=ctx.arch, num_classes=ctx.data.num_classes,
                           small_input=ctx.small_input, meta=ctx.data.meta())
    buf = io.BytesIO()
    torch.save(b, buf)
    return buf.getbuffer().nbytes


class Int8Model:
    """The INT8 ONNX model of a run, as a ``runtimes.Runtime``: it predicts and is timed on the CPU in its
    format's runtime (ONNX Runtime, or OpenVINO), saves an INT8 bundle, and its parameters and MACs are
    counted on the fp32 model it was made from, against which (in fp32 under the same runtime) its own
    speed-up is timed and its top-1 answers are compared (``int8_agreement``)."""

    device = torch.device("cpu")

    def __init__(self, onnx_bytes: bytes, fp32: nn.Module | None, fp32_onnx: bytes, fp32_size_bytes: int,
                 threads: int | None = None, fp32_is_start: bool = True, fmt: str = "qdq", method: str = "quantize_int8"):
        self.onnx_bytes, self.module, self.fp32_is_start = onnx_bytes, fp32, fp32_is_start
        self.fp32_onnx, self.fp32_size_bytes, self.fmt, self.method = fp32_onnx, fp32_size_bytes, fmt, method
        # The runtime fixes its threads per session: the spec's timing threads, as PyTorch gets them
        self.threads = measure.timing_threads(threads)
        self.runner = int8_formats.runner(onnx_bytes, fmt, self.threads)
        self.agreement: float | None = None

    @classmethod
    def from_bundle(cls, bundle: dict[str, Any], fp32: nn.Module, ctx, fp32_is_start: bool) -> "Int8Model":
        """Rebuild from a finished INT8 run's bundle and the FP32 model it was made from
        (``fp32_is_start``: that model is the rebuilding run's own start)."""
        with tempfile.TemporaryDirectory(dir=ctx.run_dir) as tmp:
            path = Path(tmp) / "fp32.onnx"
            export.export_onnx(fp32, ctx.input_shape, path)
            fp32_onnx = path.read_bytes()
        extra = bundle.get("extra", {})
        fmt = extra.get("int8_format", "qdq")   # bundles from before formats were chosen: ONNX Runtime U8S8
        if fmt == "openvino" and not int8_cpu.openvino_available():
            fmt = "qdq_s8s8"   # NNCF's QDQ file runs in ONNX Runtime too (with its S8S8 kernels)
        return cls(bundle["onnx"].numpy().tobytes(), fp32, fp32_onnx, bundle_bytes(fp32, ctx),
                   ctx.spec.measure.threads, fp32_is_start, fmt, extra.get("method", "quantize_int8"))

    training = False  # inference only; eval()/train() exist so training.predict can drive it

    def eval(self) -> "Int8Model":
        return self

    def train(self, mode: bool = True) -> "Int8Model":
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x)

    def predict(self, data, cancelled) -> tuple[torch.Tensor, torch.Tensor]:
        logits, ys = training_mod.predict(self, data.loader("test", self.device), self.device, cancelled)
        if self.module is not None:
            fp32_logits, _ = training_mod.predict(self.module.to("cpu").eval(), data.loader("test", self.device),
                                                  self.device, cancelled)
        else:   # a user's ONNX model has no PyTorch graph: its own FP32 graph is what INT8 must agree with
            fp32 = export.OnnxRunner(self.fp32_onnx, threads=self.threads)
            fp32_logits = torch.cat([fp32(x) for x, _ in data.loader("test", "cpu")]) if len(ys) else logits
        self.agreement = (logits.argmax(1) == fp32_logits.argmax(1)).float().mean().item() if len(ys) else None
        return logits, ys

    def save(self, ctx, run_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
        """Save the INT8 bundle and ONNX file; ``metrics`` are this model's test metrics (the runner's)."""
        out: dict[str, Any] = {}
        bundle = export.make_onnx_bundle(self.onnx_bytes, arch=ctx.arch, num_classes=ctx.data.num_classes,
                                         small_input=ctx.small_input, meta=ctx.data.meta(),
                                         metrics={k: metrics[k] for k in ("accuracy", "top5", "roc_auc")},
                                         extra={"run_id": ctx.run_id, "method": self.method,
                                                "params": ctx.spec.method.params, "int8_format": self.fmt,
                                                "parent": ctx.spec.model.from_run})
        out["checkpoint"] = str(run_dir / "model.pt")
        out["size_bytes"] = export.save_bundle(bundle, run_dir / "model.pt")
        export.atomic_write_bytes(run_dir / "model.onnx", self.onnx_bytes)
        out["onnx"] = str(run_dir / "model.onnx")
        out["onnx_bytes"] = len(self.onnx_bytes)
        out["fp32_size_bytes"] = self.fp32_size_bytes
        out["fp32_onnx_bytes"] = len(self.fp32_onnx)
        out["size_ratio_vs_fp32"] = out["size_bytes"] / self.fp32_size_bytes
        out["precision"] = "int8"
        out["runtime"] = int8_formats.runtime_name(self.fmt)
        out["int8_format"] = self.fmt
        out["int8_agreement"] = self.agreement
        cpu = int8_cpu.this_cpu()
        out["int8_cpu"] = cpu["level"]
        out["int8_cpu_note"] = cpu["note"]
        return out

    def timing(self, device: str) -> "Int8Model | None":
        return self if device == "cpu" else None

    def static_metrics(self, input_shape: tuple[int, ...]) -> dict[str, Any]:
        """Parameters and MACs of its fp32 ONNX graph, where it has no PyTorch one (``module`` None: quantised
        from a user's ONNX model)."""
        return onnx_models.static_metrics(self.fp32_onnx, input_shape)

    def reference(self) -> runtimes.Reference:
        # The FP32 model under the same runtime, timed interleaved with the INT8 one: the fair
        # reference for the INT8 speed-up.
        return runtimes.Reference(int8_formats.runner(self.fp32_onnx, self.fmt, self.threads), "int8_speedup",
                                  "fp32_onnx_latency_ms", of_start=self.fp32_is_start)


def resolve_format(fmt: str, where: str, calibration: str = "minmax") -> str:
    """``auto``: the fastest format on this CPU that takes ``calibration`` (engine.int8_cpu; quantize_int8
    checks its agreement and moves on where it falls short, methods.int8_auto); OpenVINO asked for where it is
    not installed is refused, naming ``where``."""
    if fmt == "auto":
        return int8_auto.candidates(calibration)[0]
    if fmt == "openvino" and not int8_cpu.openvino_available():
        raise SpecError(where, "openvino: OpenVINO and NNCF are not installed on this machine "
                               "(pip install openvino nncf), or use an ONNX Runtime format")
    return fmt


def check_calibration(fmt: str, calibration: str, where: str) -> None:
    if fmt == "openvino" and calibration == "entropy":
        raise SpecError(where, "entropy calibration is ONNX Runtime's; with format openvino use minmax or percentile")


def check_int8_params(params: dict, spec: Any) -> None:
    """Before anything runs: the format exists on this machine and takes the calibration asked for."""
    check_calibration(resolve_format(params["format"], "method.params.format", params["calibration"]),
                      params["calibration"], "method.params.calibration")


INT8_PARAMS = [
    Param("calibration_batches", "int", 8, "training batches used to calibrate activation ranges (the "
          "calibration-set size: batches x data.batch_size images)", low=1, high=10000),
    Param("format", "str", "auto", "auto: the fastest format on this CPU whose top-1 agrees with the FP32 "
          "model's on >= 97 % of the validation images, shown at 95 % confidence (the one-sided Wilson lower bound "
          "of its agreement: 492 of 500 images, 979 of 1,000), the formats tried fastest first (VNNI/AMX: qdq, "
          "qdq_reduce_range, openvino, qdq_s8s8; AVX2-only: openvino, qdq_reduce_range, qdq, qdq_s8s8); where none reaches "
          "97 % with every layer INT8, each format's most sensitive layers are kept FP32 until it does and the "
          "model with the fewest FP32 MACs is kept (int8_fp32_layers), else the most faithful found "
          "(int8_format_reason says which and why; qat takes the first). qdq: U8S8 QuantizeLinear/"
          "DequantizeLinear pairs; qdq_reduce_range: U8S8 with 7-bit weights (no saturation without VNNI); "
          "qdq_s8s8: int8 activations too; qoperator: integer operators (QLinearConv, ...); openvino: NNCF "
          "quantisation run by OpenVINO", choices=("auto", *int8_formats.FORMATS)),
    Param("calibration", "str", "percentile", "how activation ranges are set from the calibration images: "
          "percentile (the default: clips the rare outliers that widen minmax ranges as the calibration set "
          "grows; measured best on the runtimes bench's ResNet-18, see README), minmax, or entropy (ONNX Runtime "
          "only; no better than minmax there, and slowest)", choices=int8_formats.CALIBRATIONS),
    Param("per_channel", "bool", True, "one weight scale per output channel (more accurate) instead of per tensor"),
    Param("keep_first_last_fp32", "bool", True, "leave the first and last quantisable layers (stem convolution, "
          "classifier) in FP32: they hold a small share of the MACs (0.3 % of CIFAR ResNet-18's) and a large "
          "share of the INT8 error (measured: +0.9-1.0 pt agreement on the runtimes bench's ResNet-18, see README)"),
]


@register("quantize_int8", family="quantization", params=[
    *INT8_PARAMS,
    Param("equalize", "bool", False, "cross-layer equalisation first (Nagel et al. 2019): fold batch-norms, "
          "rescale each pair of convolutions joined by a ReLU so their channel ranges match (an exact rescaling; "
          "ReLU6 becomes ReLU). Off by default: on a MobileNetV2 trained on digits it lowered agreement by 0.3-1.4 pt "
          "(README); worth trying where depthwise channel ranges differ widely"),
    Param("max_drop_pt", "float", None, "maximum accuracy drop on the validation split, in points: the layers "
          "with the largest quantisation error stay FP32 until the drop fits (blank: quantise every layer)",
          low=0, high=100, optional=True),
], help="Post-training static INT8 (ONNX Runtime, or OpenVINO + NNCF): calibrate on training batches, quantise "
        "weights per channel, optionally keep the most sensitive layers FP32 under an accuracy limit; accuracy, "
        "agreement with the FP32 model and speed are measured on the INT8 model itself.",
   torch_output=False, check=check_int8_params)
def quantize_int8(model, ctx, params):
    fmt = params["format"]
    if fmt != "auto":   # auto: chosen by validation agreement in static_int8
        fmt = resolve_format(fmt, "method.params.format")
        check_calibration(fmt, params["calibration"], "method.params.calibration")
    # a user's ONNX model is quantised as it is (no PyTorch graph to export)
    return static_int8(model.to("cpu").eval(), ctx, params, fmt)


def static_int8(model: nn.Module, ctx, params: dict[str, Any], fmt: str, method: str = "quantize_int8") -> "Int8Model":
    """Static INT8 of ``model`` in ``fmt`` under ``params`` (INT8_PARAMS, plus max_drop_pt), recorded under
    ``ctx.extra["quantization"]``. ``fmt`` "auto": the fastest format here whose validation agreement with
    ``model`` meets the floor (methods.int8_auto), the choice and its reason recorded."""
    batches, calibration = params["calibration_batches"], params["calibration"]
    onnx = isinstance(model, onnx_models.OnnxModel)
    equalized = None
    if params.get("equalize") and not onnx:
        equalized = equalize.equalize(model)
    with tempfile.TemporaryDirectory(dir=ctx.run_dir) as tmp:
        fp32_path, int8_path = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        if onnx:
            fp32_path.write_bytes(model.onnx_bytes)
        else:   # the equalised model is what is quantised; agreement is still against the model as given
            export.export_onnx(equalized.model if equalized else model, ctx.input_shape, fp32_path)
        ctx.progress(phase="calibrate")
        source, skipped = int8_formats.preprocess(fp32_path, Path(tmp) / "prepped.onnx")

        edges = int8_formats.first_and_last(source) if params.get("keep_first_last_fp32") else []

        def make_in(f: str, excluded: list[str]) -> bytes:
            int8_formats.quantize(source, int8_path, f, ctx.data, batches, calibration, params["per_channel"],
                                  [*edges, *excluded])
            return int8_path.read_bytes()
        choice = None
        kept: list[str] = []   # layers format auto kept FP32 to meet the agreement floor
        if fmt == "auto":
            ctx.progress(phase="int8:auto")
            fp32_top1, predict = int8_auto.top1(model, ctx.data), int8_auto.runner_top1(ctx.data)
            choice = int8_auto.choose(int8_auto.candidates(calibration), lambda f: make_in(f, []), fp32_top1, predict)
            if not choice.met:
                ctx.progress(phase="int8:keep-fp32")
                choice = int8_auto.keep_fp32(
                    choice, make_in, lambda f, raw: _sensitivity_order(ctx, params, f, source, Path(tmp), raw, edges),
                    fp32_top1, predict, onnx_models.node_macs(source.read_bytes(), tuple(ctx.input_shape)),
                    cancelled=ctx.cancelled)
            fmt, int8_bytes, kept = choice.format, choice.onnx_bytes, choice.kept_fp32
        else:
            int8_bytes = make_in(fmt, [])

        def make(excluded: list[str]) -> bytes:
            return make_in(fmt, [*kept, *excluded])
        limit = None
        if params.get("max_drop_pt") is not None:
            limit = _accuracy_limited(model, ctx, params, fmt, source, Path(tmp), make, int8_bytes, [*edges, *kept])
            int8_bytes = limit.best_bytes
        fp32_bytes = fp32_path.read_bytes()
    if skipped:
        ctx.log.warning("ONNX Runtime's pre-processing (BN folding, shape inference) failed, quantised without "
                        "it: %s", skipped)
    s8 = fmt in ("qdq_s8s8", "openvino")
    ctx.extra["quantization"] = {"format": fmt, "format_asked": params.get("format", fmt),
                                 "runtime": int8_formats.runtime_name(fmt), "per_channel": params["per_channel"],
                                 "weights": "int7 (reduce_range)" if fmt == "qdq_reduce_range" else "int8",
                                 "activations": "int8" if s8 else "uint8", "calibration": calibration,
                                 "calibration_batches": batches, "cpu": int8_cpu.this_cpu(), "kept_fp32_edges": edges,
                                 "bias_correction": "NNCF fast bias correction" if fmt == "openvino" else None,
                                 "preprocessed": skipped is None, **({"preprocess_error": skipped} if skipped else {})}
    # what the file holds, not what was asked: a quantiser may leave layers FP32 of its own accord
    storage = int8_formats.weight_storage(int8_bytes)
    ctx.extra["quantization"]["weight_storage"] = storage
    ctx.extra["int8_fp32_weight_share"] = storage["fp32_share"]
    if params.get("equalize"):
        ctx.extra["quantization"]["equalization"] = (
            {"pairs": equalized.pairs, "batch_norms_folded": equalized.folded_bn,
             "relu6_to_relu": equalized.relu6_swapped, "iterations": equalized.iterations} if equalized else
            "skipped: an ONNX model has no PyTorch layers to rescale")
    if choice is not None:
        ctx.extra["quantization"]["auto"] = choice.summary()
        ctx.extra["int8_val_agreement"] = choice.agreement
        ctx.extra["int8_format_reason"] = choice.reason
        if choice.searches:
            ctx.extra["int8_fp32_layers"] = choice.kept_fp32
            ctx.log.warning("INT8 format auto: %s", choice.reason)
        elif not choice.met:
            ctx.log.warning("INT8 format auto: %s", choice.reason)
    if limit is not None:
        summary = limit.summary()
        ctx.extra["quantization"]["accuracy_limit"] = summary
        ctx.extra["int8_fp32_layers"] = [*kept, *summary["kept_fp32"]]
        ctx.extra["int8_val_drop_pt"] = summary["val_drop_pt"]
        ctx.extra["int8_limit_met"] = summary["met"]
        if not summary["met"]:
            ctx.log.warning("INT8 accuracy limit of %.2f pt not met: the best found drops %.2f pt on the validation "
                            "split with %d layers in FP32", summary["max_drop_pt"], summary["val_drop_pt"],
                            len(summary["kept_fp32"]))
    if onnx:
        return Int8Model(int8_bytes, None, fp32_bytes, onnx_models.bundle_bytes(fp32_bytes, ctx),
                         ctx.spec.measure.threads, fmt=fmt, method=method)
    return Int8Model(int8_bytes, model, fp32_bytes, bundle_bytes(model, ctx), ctx.spec.measure.threads, fmt=fmt,
                     method=method)


def _accuracy_limited(model: nn.Module, ctx, params: dict[str, Any], fmt: str, source: Path, tmp: Path, make,
                      int8_bytes: bytes, edges: list[str]) -> int8_accuracy.Search:
    """Keep the noisiest layers FP32 until the validation drop is at most ``max_drop_pt`` (``edges``: the
    layers FP32 already)."""
    ctx.progress(phase="int8:sensitivity")
    fp32_acc = int8_accuracy.accuracy(model, ctx.data, "val")
    order = _sensitivity_order(ctx, params, fmt, source, tmp, int8_bytes, edges)
    ctx.progress(phase="int8:accuracy-limit")

    def score(b: bytes) -> float:
        return int8_accuracy.accuracy(int8_formats.runner(b, fmt, None), ctx.data, "val")
    first = {"done": False}

    def make_once(excluded: list[str]) -> bytes:   # the all-INT8 model is made already
        if not excluded and not first["done"]:
            first["done"] = True
            return int8_bytes
        return make(excluded)
    return int8_accuracy.search(make_once, score, order, fp32_acc, params["max_drop_pt"], ctx.cancelled)


def _sensitivity_order(ctx, params: dict[str, Any], fmt: str, source: Path, tmp: Path, int8_bytes: bytes,
                       skip: list[str]) -> list[str]:
    """The quantised layers of ``int8_bytes`` (in ``fmt``), the largest quantisation error (lowest SQNR) first,
    less ``skip`` (the layers FP32 already)."""
    qdq = tmp / "ranking.onnx"
    if fmt.startswith("qdq"):    # rank on the very model the search starts from
        qdq.write_bytes(int8_bytes)
    else:                        # no QDQ pairs to read (qoperator) or another quantiser (NNCF): an S8S8 proxy
        int8_formats.quantize(source, qdq, "qdq_s8s8", ctx.data, params["calibration_batches"],
                              params["calibration"] if params["calibration"] != "entropy" else "minmax",
                              params["per_channel"], skip)
    reader = int8_formats.Calibration(ctx.data, int8_formats.input_name(source), params["calibration_batches"])
    return [n for n in int8_accuracy.ranked(int8_accuracy.layer_sqnr(source, qdq, reader)) if n not in skip]


def half_dtype(requested: str, device: torch.device) -> tuple[str, str]:
    """The 16-bit type ``half`` casts to and why. ``auto``: float16 on CUDA (its tensor cores' type); bfloat16
    on a CPU, where PyTorch has no fast float16 convolution (a CIFAR ResNet-20 scored 16x slower than FP32 on
    an AVX-512 EPYC) but oneDNN runs bfloat16 natively on AVX-512 BF16 / AMX (2.6x faster than FP32 there)."""
    if requested != "auto":
        return requested, "asked for"
    if device.type == "cuda":
        return "float16", "auto on CUDA: float16, the tensor cores' type"
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return "bfloat16", ("auto on CPU: bfloat16, " + ("which this CPU runs natively (oneDNN: AVX-512 BF16 / AMX)"
                        if native else "the CPU's least slow 16-bit type here (no native BF16: expect it slower "
                        "than float32)") + "; PyTorch has no fast CPU float16 convolution")


@register("half", family="quantization", params=[
    Param("dtype", "str", "auto", "auto (float16 on CUDA, bfloat16 on CPU), float16 or bfloat16 weights and "
          "activations", choices=("auto", "float16", "bfloat16")),
], help="Cast weights to 16 bits (half the file size). auto picks float16 on a GPU and bfloat16 on a CPU, where "
        "it is faster than float32 on CPUs with AVX-512 BF16 or AMX and PyTorch's float16 is many times slower; "
        "the record names the type, why, and its measured speed.")
def half(model, ctx, params):
    name, why = half_dtype(params["dtype"], ctx.device)
    model = export.to_low_precision(model.to("cpu"), getattr(torch, name))
    ctx.extra["precision"] = name
    ctx.extra["half_note"] = f"{name} ({why}); " + ("CUDA half-precision kernels are measured under gpu_*"
                                                   if ctx.device.type == "cuda" else
                                                   "CPU latency is PyTorch's CPU kernels for this type")
    return model
