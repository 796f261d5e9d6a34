"""What a method's result is to the runner: a model under some runtime, behind one small contract.

A method returns a PyTorch model (the runner wraps it in ``TorchRuntime``) or a ``Runtime`` of
its own (``methods.quantize.Int8Model``: INT8 under ONNX Runtime or OpenVINO, by its format). The runner then evaluates,
saves and measures every result the same way: ``predict`` gives its test logits, ``save`` writes
its artefacts, ``timing`` is what latency and throughput time (``measure.measure_model``), and
``reference`` is what its own speed-up is timed against, interleaved. Further runtimes (ONNX
Runtime fp32, OpenVINO, TensorRT) plug in here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn

from . import export, training

Predictor = Callable[[torch.Tensor], Any]   # batch tensor -> outputs (logits)


@dataclass(frozen=True)
class Reference:
    """The model this runtime's own speed-up is judged against, under this runtime (INT8: its fp32
    model under ONNX Runtime: the gain of quantisation alone), and the record keys the paired timing
    goes under: ``speedup_key`` (its [slowest, fastest] rounds under ``speedup_key + "_range"``) and
    ``latency_key`` (the reference's median latency). Where it is the run's starting model
    (``of_start``), its figure is also the run's ``paired_speedup`` (x faster than its start in the
    same runtime); else (a pipeline's INT8 reference is its last fp32 step) the run has none. The
    runner times the eager PyTorch start against this runtime as ``speedup_vs_eager_start``, which
    no view credits as speed-up."""
    fn: Predictor
    speedup_key: str
    latency_key: str
    of_start: bool = True


class Runtime(Protocol):
    device: torch.device    # where its test logits are computed
    module: nn.Module       # the PyTorch graph its parameters, MACs and sparsity are counted on (CPU)

    def predict(self, data, cancelled: Callable[[], bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) of the test split, float32 on the CPU."""

    def save(self, ctx, run_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
        """Write its artefacts (bundle, ONNX file, ...) to ``run_dir``; returns their record fields.
        ``metrics``: its test metrics, for the bundle."""

    def timing(self, device: str) -> Predictor | None:
        """The callable to time on ``device`` ("cpu" or "cuda"), placed there; None where it does not run."""

    def reference(self) -> Reference | None:
        """Its start under this runtime, where that is not the eager PyTorch start (None: it is)."""


class TorchRuntime:
    """A PyTorch model in eager mode: saved as a Slimbench bundle (and an ONNX file if the spec asks)."""

    def __init__(self, model: nn.Module, device: torch.device):
        self.module, self.device = model, device

    def predict(self, data, cancelled: Callable[[], bool]) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.module.to(self.device).eval()
        return training.predict(model, data.loader("test", self.device), self.device, cancelled)

    def save(self, ctx, run_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
        model = self.module.to("cpu")
        bundle = export.make_bundle(model, arch=ctx.arch, num_classes=ctx.data.num_classes,
                                    small_input=ctx.small_input, meta=ctx.data.meta(),
                                    metrics={k: metrics[k] for k in ("accuracy", "top5", "roc_auc")},
                                    extra={"run_id": ctx.run_id, "method": ctx.spec.method.name,
                                           "params": ctx.spec.method.params, "parent": ctx.spec.model.from_run})
        out: dict[str, Any] = {"checkpoint": str(run_dir / "model.pt"),
                               "size_bytes": export.save_bundle(bundle, run_dir / "model.pt"),
                               "onnx": None, "onnx_bytes": None}
        if ctx.spec.measure.onnx:
            try:
                export.export_onnx(model, ctx.input_shape, run_dir / "model.onnx")
                sample = next(iter(ctx.data.loader("test", "cpu", batch_size=32)))[0]
                check = export.verify_onnx(model, run_dir / "model.onnx", sample)
                out.update(check)
                out["onnx"] = str(run_dir / "model.onnx")
                out["onnx_bytes"] = (run_dir / "model.onnx").stat().st_size
                if check["onnx_top1_agreement"] < 1.0:
                    ctx.log.warning("ONNX top-1 agrees with torch on %.1f%% of samples",
                                    100 * check["onnx_top1_agreement"])
            except Exception as e:  # some rewritten graphs do not export; the run still counts
                msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
                out["onnx_error"] = f"{type(e).__name__}: {msg}"[:500]
                ctx.log.warning("ONNX export skipped: %s", out["onnx_error"])
        return out

    def timing(self, device: str) -> Predictor:
        return self.module.to(device).eval()

    def reference(self) -> None:
        return None


def of(out: Any, device: torch.device) -> Runtime:
    """A method's result as a runtime: a PyTorch model runs eagerly on ``device``; a Runtime is itself."""
    return TorchRuntime(out, device) if isinstance(out, nn.Module) else out
