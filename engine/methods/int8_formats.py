"""The INT8 formats Slimbench can make from an FP32 ONNX file, and the runtime each one runs in.

ONNX Runtime formats (``quantize_static``; they differ in how the integer kernels multiply):
- ``qdq``: uint8 activations x int8 weights (U8S8) as QuantizeLinear/DequantizeLinear pairs; fastest,
  but on CPUs without VNNI its kernels can saturate (see engine.int8_cpu);
- ``qdq_reduce_range``: U8S8 with 7-bit weights, which cannot saturate; faithful on AVX2-only CPUs;
- ``qdq_s8s8``: int8 activations and weights;
- ``qoperator``: U8S8 as integer operators (QLinearConv, ...).
``openvino``: NNCF quantises the same ONNX file (with its fast bias correction) and OpenVINO runs it. NNCF
leaves squeeze-and-excitation blocks FP32 (for accuracy); their weights are then stored INT8, still computed in
FP32 (``weights_to_int8``), else they would keep a MobileNetV3-small's file at half its FP32 size.
Every format's result is an ONNX file with its quantisation in it; the runner of that format runs it (its
home runtime, ``home``). The same file can also load in the other runtime of ``INT8_RUNTIMES`` (OpenVINO reads
QDQ pairs as INT8; ONNX Runtime runs NNCF's QDQ file with its own kernels): ``runner_in`` loads it there, e.g. to
time an INT8 model where it runs fastest. Whether it loads (``qoperator``'s integer operators may not) and answers
as in its home runtime is for the caller to check.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .. import export

ORT_FORMATS = ("qdq", "qdq_reduce_range", "qdq_s8s8", "qoperator")
FORMATS = (*ORT_FORMATS, "openvino")
CALIBRATIONS = ("minmax", "entropy", "percentile")
INT8_RUNTIMES = ("onnxruntime", "openvino")   # the runtimes an INT8 ONNX file runs in
QUANTIZABLE_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")   # the layers that can be kept FP32
RUNTIME_NAMES = {"openvino": "OpenVINO CPU (INT8 kernels)"}   # else ONNX Runtime


def runtime_name(fmt: str) -> str:
    return RUNTIME_NAMES.get(fmt, "onnxruntime CPU (INT8 kernels)")


class Calibration:
    """onnxruntime CalibrationDataReader over the first ``batches`` training batches (no augmentation)."""

    def __init__(self, data, input_name: str, batches: int, split: str = "train"):
        self.input_name, self.batches, self.data, self.split = input_name, batches, data, split
        self.rewind()

    def rewind(self) -> None:
        self._it = self._full_batches()

    def _full_batches(self):
        """The first ``batches`` batches, without a shorter last one: ONNX Runtime's histogram calibrators
        (percentile, entropy) stack the batches into one array and fail on a ragged one."""
        size = None
        for i, (x, _) in enumerate(self.data.loader(self.split, "cpu", train=False)):
            if i >= self.batches or (size is not None and len(x) != size):
                return
            size = len(x)
            yield x

    def get_next(self) -> dict[str, Any] | None:
        x = next(self._it, None)
        return None if x is None else {self.input_name: x.numpy()}

    def arrays(self) -> list[Any]:
        self.rewind()
        return [batch[self.input_name] for batch in iter(self.get_next, None)]


def preprocess(fp32_path: Path, out_path: Path) -> tuple[Path, str | None]:
    """ONNX Runtime's pre-processing (folds BN into convs, infers shapes): (file to quantise, why it was
    skipped or None). Optional: a model it cannot process is quantised as exported, and the record says so."""
    from onnxruntime.quantization.shape_inference import quant_pre_process
    try:
        quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)
        return out_path, None
    except Exception as e:
        return fp32_path, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def input_name(path: Path) -> str:
    import onnx
    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def quantizable_nodes(path: Path) -> list[str]:
    """Names of the nodes whose weights are quantised (what can be kept FP32), in graph order."""
    import onnx
    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node
            if n.op_type in QUANTIZABLE_OPS]


def first_and_last(path: Path) -> list[str]:
    """The first and last quantisable nodes (stem and classifier): kept FP32 by ``keep_first_last_fp32``."""
    nodes = quantizable_nodes(path)
    return list(dict.fromkeys([nodes[0], nodes[-1]])) if nodes else []


def quantize(source: Path, out_path: Path, fmt: str, data, batches: int, calibration: str = "minmax",
             per_channel: bool = True, exclude: Sequence[str] = ()) -> None:
    """Write the INT8 model of ``source`` (pre-processed FP32 ONNX) in ``fmt`` to ``out_path``, calibrated on
    ``batches`` training batches, the nodes named in ``exclude`` left in FP32."""
    reader = Calibration(data, input_name(source), batches)
    if fmt == "openvino":
        _quantize_nncf(source, out_path, reader, calibration, exclude)
        return
    try:
        _quantize_ort(source, out_path, fmt, reader, calibration, per_channel, exclude)
    except ValueError as e:
        # ONNX Runtime's histogram calibrators (percentile, entropy) cannot bin an activation whose range is
        # (almost) zero, e.g. a dead channel of a tiny or barely trained net: min-max calibrates it instead.
        if calibration == "minmax" or "bins" not in str(e):
            raise
        logging.getLogger("slimbench.run").warning("INT8: %s calibration failed (%s); calibrated with minmax",
                                                   calibration, str(e).splitlines()[0][:120])
        reader.rewind()
        _quantize_ort(source, out_path, fmt, reader, "minmax", per_channel, exclude)


def _quantize_ort(source: Path, out_path: Path, fmt: str, reader: Calibration, calibration: str,
                  per_channel: bool, exclude: Sequence[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    s8 = fmt == "qdq_s8s8"
    quantize_static(str(source), str(out_path), reader,
                    quant_format=QuantFormat.QOperator if fmt == "qoperator" else QuantFormat.QDQ,
                    per_channel=per_channel, reduce_range=fmt == "qdq_reduce_range",
                    activation_type=QuantType.QInt8 if s8 else QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=list(exclude),
                    calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                      "percentile": CalibrationMethod.Percentile}[calibration])


def _quantize_nncf(source: Path, out_path: Path, reader: Calibration, calibration: str,
                   exclude: Sequence[str]) -> None:
    import logging

    import nncf
    import onnx
    nncf.set_log_level(logging.ERROR)   # per-node INFO lines and progress bars would flood the run's log
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet
    arrays = reader.arrays()
    estimator = {"minmax": RangeEstimatorParametersSet.MINMAX,
                 "percentile": RangeEstimatorParametersSet.MEAN_QUANTILE}[calibration]
    model = nncf.quantize(onnx.load(str(source)), nncf.Dataset(arrays, lambda x: {reader.input_name: x}),
                          subset_size=len(arrays),   # dataset items: batches
                          ignored_scope=nncf.IgnoredScope(names=list(exclude), validate=False) if exclude else None,
                          advanced_parameters=AdvancedQuantizationParameters(
                              activations_range_estimator_params=estimator))
    # NNCF leaves whole squeeze-and-excitation blocks FP32 (its SE_BLOCK ignored pattern, for accuracy): in
    # MobileNetV3-small their 1x1 convs hold 30 % of the FP32 weights, which kept the file at half its FP32 size.
    weights_to_int8(model, exclude)
    onnx.save(model, str(out_path))


def _weight_axis(node) -> int:
    """The output-channel axis of ``node``'s weight (input 1): 0, except a Gemm without transB ((K, N) weight)."""
    if node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute):
        return 1
    return 1 if node.op_type == "ConvTranspose" else 0


def weights_to_int8(model, exclude: Sequence[str] = ()) -> list[str]:
    """Store the FP32 weights of the quantisable layers of ``model`` (an onnx ModelProto, changed in place) that
    a quantiser left FP32, other than the layers named in ``exclude``, as INT8 with one symmetric scale per output
    channel behind a DequantizeLinear: the layer still computes in FP32 (weight-only, as its quantiser chose), on
    weights rounded to 8 bits. Returns the names of the layers changed."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    changed, skip = [], set(exclude) | {i.name for i in graph.input}   # a graph input can override its value
    for node in list(graph.node):
        w = inits.get(node.input[1]) if node.op_type in QUANTIZABLE_OPS and len(node.input) > 1 else None
        # only a float32 weight this node alone reads (a shared one would change under its other readers)
        if node.name in skip or w is None or w.name in skip or w.data_type != TensorProto.FLOAT or uses[w.name] != 1:
            continue
        a = numpy_helper.to_array(w)
        axis = _weight_axis(node)
        peak = np.abs(np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)).max(axis=1)
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)   # an all-zero channel stays zero
        shape = [1] * a.ndim
        shape[axis] = -1
        q = np.clip(np.round(a / scale.reshape(shape)), -127, 127).astype(np.int8)
        base = w.name
        graph.initializer.remove(w)
        graph.initializer.extend([numpy_helper.from_array(q, base + "_int8"),
                                  numpy_helper.from_array(scale, base + "_int8_scale"),
                                  numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), base + "_int8_zero")])
        graph.node.insert(list(graph.node).index(node), helper.make_node(
            "DequantizeLinear", [base + "_int8", base + "_int8_scale", base + "_int8_zero"], [base],
            name=base + "_DequantizeLinear", axis=axis))
        changed.append(node.name)
    return changed


_LAYOUT_OPS = ("Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity")   # move values, change none


def weight_storage(onnx_bytes: bytes) -> dict[str, Any]:
    """How the quantisable layers of an INT8 ONNX file store their weights: ``fp32`` (layers whose weight is an
    FP32 tensor, the first and last kept FP32 included), ``fp32_bytes`` (those tensors' bytes) and
    ``fp32_share`` (of the file), and ``int8_weight_only`` (INT8 weights dequantised to an FP32 computation, their
    activations not quantised)."""
    import onnx
    from onnx import TensorProto
    graph = onnx.load_from_string(onnx_bytes).graph
    inits = {t.name: t for t in graph.initializer}
    made_by = {o: n for n in graph.node for o in n.output}
    fp32, weight_only, fp32_bytes = [], [], 0
    for node in graph.node:
        if node.op_type not in QUANTIZABLE_OPS or len(node.input) < 2:
            continue
        w, src = inits.get(node.input[1]), made_by.get(node.input[1])
        if w is not None and w.data_type == TensorProto.FLOAT:
            fp32.append(node.name)
            fp32_bytes += 4 * math.prod(w.dims)
        elif src is not None and src.op_type == "DequantizeLinear":
            act = made_by.get(node.input[0])
            while act is not None and act.op_type in _LAYOUT_OPS:   # NNCF quantises before a Flatten, not after
                act = made_by.get(act.input[0])
            if act is None or act.op_type != "DequantizeLinear":
                weight_only.append(node.name)
    return {"fp32": fp32, "fp32_bytes": fp32_bytes, "fp32_share": fp32_bytes / len(onnx_bytes),
            "int8_weight_only": weight_only}


class OpenVinoRunner:
    """An ONNX model compiled by OpenVINO for the CPU, as a callable: float batch -> float32 logits."""

    def __init__(self, onnx_bytes: bytes, threads: int | None = None):
        import openvino as ov
        core = ov.Core()
        config = {"PERFORMANCE_HINT": "LATENCY", **({"INFERENCE_NUM_THREADS": int(threads)} if threads else {})}
        self.compiled = core.compile_model(core.read_model(onnx_bytes), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.request.infer({0: x})[0].copy()).float()


def home(fmt: str) -> str:
    """The runtime a model of ``fmt`` is made for and scored in (one of ``INT8_RUNTIMES``)."""
    return "openvino" if fmt == "openvino" else "onnxruntime"


def runner_in(runtime: str, onnx_bytes: bytes, threads: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """An INT8 ONNX file loaded in ``runtime`` (one of ``INT8_RUNTIMES``), whichever format made it."""
    if runtime not in INT8_RUNTIMES:
        raise ValueError(f"an INT8 ONNX file runs in {' or '.join(INT8_RUNTIMES)}, not in {runtime!r}")
    return OpenVinoRunner(onnx_bytes, threads) if runtime == "openvino" else export.OnnxRunner(onnx_bytes,
                                                                                                threads=threads)


def runner(onnx_bytes: bytes, fmt: str, threads: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The runtime that runs a model of ``fmt`` (its FP32 reference runs there too: same-runtime speed-ups)."""
    return runner_in(home(fmt), onnx_bytes, threads)
