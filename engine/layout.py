"""The files of a run folder (``runs/<id>/``). Torch-free, so the worker can clean a folder up."""
from __future__ import annotations

from pathlib import Path

CHECKPOINT = "model.pt"
ONNX = "model.onnx"
OPENVINO = ("model.xml", "model.bin")   # OpenVINO IR: the graph and its weights (engine.deploy)
RESULT = "result.json"
CARD = "card.json"
LOG = "log"
SPEC = "spec.json"
SWEEP = "sweep.json"   # thread and batch curves of a finished run (engine.sweeps)
MLFLOW = "mlflow.json"  # where the run was logged to MLflow, or why it could not be (engine.tracking)
# Made on request from the bundle (engine.portable): a program plain PyTorch loads, and which one it is.
PT2 = "model.pt2"
TORCHSCRIPT = "model.torchscript.pt"
PORTABLE_NOTE = "portable.json"
DERIVED = (PT2, TORCHSCRIPT, PORTABLE_NOTE)
# What a finished run shows; removed again when a run does not finish, so none is ever half-done.
ARTIFACTS = (CHECKPOINT, ONNX, *OPENVINO, RESULT, CARD, SWEEP)
TEMP_GLOB = ".*.tmp*"  # atomic writes go to ".<name>.<pid>.tmp" first, then are renamed


def remove_artifacts(run_dir: Path) -> None:
    """Drop a run's result files and temp files, so a run that did not finish shows none."""
    for name in (*ARTIFACTS, MLFLOW, *DERIVED):
        (run_dir / name).unlink(missing_ok=True)
    for tmp in run_dir.glob(TEMP_GLOB):
        tmp.unlink(missing_ok=True)
