"""Lower-precision weights: INT8 through ONNX Runtime's static quantiser, and fp16/bf16 for GPUs.

``quantize_int8`` exports the FP32 model to ONNX, calibrates activation ranges on training
batches, and writes an INT8 model (per-channel weight scales) that ONNX Runtime runs with real
integer kernels. Its accuracy, file size and speed are measured on that INT8 model itself: the
returned ``Int8Model`` is a ``runtimes.Runtime``, which the runner evaluates, saves and measures
as it does a PyTorch model.
"""
from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .. import export, measure, onnx_models, runtimes
from .. import training as training_mod  # the class below has a `training` flag
from . import Param, register


class _Calibration:
    """onnxruntime CalibrationDataReader over the first ``batches`` training batches (no augmentation)."""

    def __init__(self, data, input_name: str, batches: int):
        self.input_name, self.batches, self.data = input_name, batches, data
        self.rewind()

    def rewind(self) -> None:
        loader = self.data.loader("train", "cpu", train=False)
        self._it = (x for i, (x, _) in enumerate(loader) if i < self.batches)

    def get_next(self) -> dict[str, Any] | None:
        x = next(self._it, None)
        return None if x is None else {self.input_name: x.numpy()}


def quantize_onnx(fp32_path: Path, out_path: Path, data, batches: int, fmt: str, per_channel: bool) -> str | None:
    """Static INT8 of the FP32 ONNX file; returns why the optional pre-processing was skipped, or None."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    prepped = fp32_path.with_name("prepped.onnx")
    skipped = None
    try:  # folds BN into convs and infers shapes: better quantisation; optional
        quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=True)
        source = prepped
    except Exception as e:  # quantised all the same, but the record says so (accuracy may suffer)
        source, skipped = fp32_path, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    import onnx
    name = onnx.load(str(source), load_external_data=False).graph.input[0].name
    quantize_static(str(source), str(out_path), _Calibration(data, name, batches),
                    quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                    per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return skipped


def bundle_bytes(model: nn.Module, ctx) -> int:
    """Size of the FP32 bundle the same model would have: what INT8 is compared with."""
    b = export.make_bundle(model.to("cpu"), arch=ctx.arch, num_classes=ctx.data.num_classes,
                           small_input=ctx.small_input, meta=ctx.data.meta())
    buf = io.BytesIO()
    torch.save(b, buf)
    return buf.getbuffer().nbytes


class Int8Model:
    """The INT8 ONNX model of a run, as a ``runtimes.Runtime``: it predicts and is timed on the CPU under
    ONNX Runtime, saves an INT8 bundle, and its parameters and MACs are counted on the fp32 model it
    was made from, against which (in fp32 under the same runtime) its own speed-up is timed."""

    device = torch.device("cpu")

    def __init__(self, onnx_bytes: bytes, fp32: nn.Module | None, fp32_onnx: bytes, fp32_size_bytes: int,
                 threads: int | None = None, fp32_is_start: bool = True):
        self.onnx_bytes, self.module, self.fp32_is_start = onnx_bytes, fp32, fp32_is_start
        self.fp32_onnx, self.fp32_size_bytes = fp32_onnx, fp32_size_bytes
        # ONNX Runtime fixes its threads per session: the spec's timing threads, as PyTorch gets them
        self.threads = measure.timing_threads(threads)
        self.runner = export.OnnxRunner(onnx_bytes, threads=self.threads)

    @classmethod
    def from_bundle(cls, bundle: dict[str, Any], fp32: nn.Module, ctx, fp32_is_start: bool) -> "Int8Model":
        """Rebuild from a finished quantize_int8 run's bundle and the FP32 model it was made from
        (``fp32_is_start``: that model is the rebuilding run's own start)."""
        with tempfile.TemporaryDirectory(dir=ctx.run_dir) as tmp:
            path = Path(tmp) / "fp32.onnx"
            export.export_onnx(fp32, ctx.input_shape, path)
            fp32_onnx = path.read_bytes()
        return cls(bundle["onnx"].numpy().tobytes(), fp32, fp32_onnx, bundle_bytes(fp32, ctx),
                   ctx.spec.measure.threads, fp32_is_start)

    training = False  # inference only; eval()/train() exist so training.predict can drive it

    def eval(self) -> "Int8Model":
        return self

    def train(self, mode: bool = True) -> "Int8Model":
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x)

    def predict(self, data, cancelled) -> tuple[torch.Tensor, torch.Tensor]:
        return training_mod.predict(self, data.loader("test", self.device), self.device, cancelled)

    def save(self, ctx, run_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
        """Save the INT8 bundle and ONNX file; ``metrics`` are this model's test metrics (the runner's)."""
        out: dict[str, Any] = {}
        bundle = export.make_onnx_bundle(self.onnx_bytes, arch=ctx.arch, num_classes=ctx.data.num_classes,
                                         small_input=ctx.small_input, meta=ctx.data.meta(),
                                         metrics={k: metrics[k] for k in ("accuracy", "top5", "roc_auc")},
                                         extra={"run_id": ctx.run_id, "method": "quantize_int8",
                                                "params": ctx.spec.method.params,
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
        out["runtime"] = "onnxruntime CPU (INT8 kernels)"
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
        return runtimes.Reference(export.OnnxRunner(self.fp32_onnx, threads=self.threads), "int8_speedup",
                                  "fp32_onnx_latency_ms", of_start=self.fp32_is_start)


@register("quantize_int8", family="quantization", params=[
    Param("calibration_batches", "int", 8, "training batches used to calibrate activation ranges", low=1, high=10000),
    Param("format", "str", "qdq", "qdq: QuantizeLinear/DequantizeLinear pairs (fused by the runtime); "
          "qoperator: integer operators (QLinearConv, ...)", choices=("qdq", "qoperator")),
    Param("per_channel", "bool", True, "one weight scale per output channel (more accurate) instead of per tensor"),
], help="Post-training static INT8 with ONNX Runtime: calibrate on training batches, quantise weights per "
        "channel; accuracy and speed are measured on the INT8 model itself.",
   torch_output=False)
def quantize_int8(model, ctx, params):
    onnx = isinstance(model, onnx_models.OnnxModel)  # a user's ONNX model: quantised as it is
    model = model.to("cpu").eval()
    with tempfile.TemporaryDirectory(dir=ctx.run_dir) as tmp:
        fp32_path, int8_path = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        if onnx:
            fp32_path.write_bytes(model.onnx_bytes)
        else:
            export.export_onnx(model, ctx.input_shape, fp32_path)
        ctx.progress(phase="calibrate")
        skipped = quantize_onnx(fp32_path, int8_path, ctx.data, params["calibration_batches"], params["format"],
                                params["per_channel"])
        fp32_bytes, int8_bytes = fp32_path.read_bytes(), int8_path.read_bytes()
    if skipped:
        ctx.log.warning("ONNX Runtime's pre-processing (BN folding, shape inference) failed, quantised without "
                        "it: %s", skipped)
    ctx.extra["quantization"] = {"format": params["format"], "per_channel": params["per_channel"],
                                 "weights": "int8", "activations": "uint8",
                                 "calibration_batches": params["calibration_batches"],
                                 "preprocessed": skipped is None, **({"preprocess_error": skipped} if skipped else {})}
    if onnx:
        return Int8Model(int8_bytes, None, fp32_bytes, onnx_models.bundle_bytes(fp32_bytes, ctx),
                         ctx.spec.measure.threads)
    return Int8Model(int8_bytes, model, fp32_bytes, bundle_bytes(model, ctx), ctx.spec.measure.threads)


@register("half", family="quantization", params=[
    Param("dtype", "str", "float16", "float16 or bfloat16 weights and activations", choices=("float16", "bfloat16")),
], help="Cast weights to fp16/bf16 (half the file size). Meant for GPUs; on a CPU the record says what ran "
        "and its speed honestly (usually slower than fp32).")
def half(model, ctx, params):
    dtype = getattr(torch, params["dtype"])
    model = export.to_low_precision(model.to("cpu"), dtype)
    ctx.extra["precision"] = params["dtype"]
    ctx.extra["half_note"] = ("CUDA half-precision kernels are measured under gpu_*" if torch.cuda.is_available()
                              else f"no GPU here: CPU latency is PyTorch's CPU {params['dtype']} kernels, which "
                              "are usually slower than float32; the gain is the halved file size")
    return model
