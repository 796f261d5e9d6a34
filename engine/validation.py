"""A spec checked against the registries: the dataset, the architecture, the method and its parameters.

``engine.spec`` checks structure alone (and imports no torch); :func:`check_spec` is the one way
every entry point (runner, queue, CLI, presets, pages, bench) turns a dict into a fully checked
``JobSpec``, with the method's parameters completed by their defaults.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import data, export, import_weights, methods, models, settings
from .devices import devices_problem, gpu_count
from .errors import SpecError
from .spec import DataSpec, JobSpec, short_repr


def check_spec(raw: dict[str, Any] | JobSpec) -> JobSpec:
    """``raw`` (a spec dict, or a JobSpec to check again) as a JobSpec every check has passed."""
    spec = raw if isinstance(raw, JobSpec) else JobSpec.from_dict(raw)
    if isinstance(raw, JobSpec):
        spec.validate()
    d, m = spec.data, spec.model
    if d.name not in data.DATASETS:
        raise SpecError("data.name", f"unknown dataset {short_repr(d.name)}; valid: {', '.join(data.DATASETS)}")
    data.check_decoding_memory(d)  # an image folder too big to decode here is refused now, not by the OOM killer
    if m.arch and m.arch not in models.ARCHS:
        raise SpecError("model.arch", f"unknown architecture {short_repr(m.arch)}; valid: {', '.join(models.ARCHS)}")
    if settings.backend() == "local":  # the job runs on this machine (a Ray cluster's may have more)
        check_gpu_options(spec)
        problem = devices_problem(spec.train.device, spec.train.devices)
        if problem:
            raise SpecError("train.devices", problem)
    # Method name and parameters: the registry owns their schema.
    spec.method.params = methods.validate(spec.method.name, spec.method.params, spec=spec)
    if methods.get(spec.method.name).needs_base and (m.arch or (m.file and not m.file.endswith(".pt2")
                                                                and not m.weights)):
        raise SpecError("model", f"method {spec.method.name} compresses a trained model: set model.from_run or "
                        "model.checkpoint (train one first with method baseline)")
    if m.normalisation is not None:
        try:
            import_weights.parse_normalisation(m.normalisation)
        except export.BundleError as e:
            raise SpecError("model.normalisation", str(e)) from None
    return spec



def check_gpu_options(spec: JobSpec) -> None:
    """Refuse, before anything trains, a CUDA-only option where ``train.device`` auto would train on this
    machine's CPU (``engine.spec`` refuses it where the device is ``cpu``; a ``cuda`` device this machine
    lacks is refused when queued, ``jobs._enqueue``, and by ``resolve_device`` before any data loads)."""
    t = spec.train
    if t.amp in ("bf16", "fp16") and t.device == "auto" and not gpu_count():
        raise SpecError("train.amp", f"{t.amp} autocast is CUDA-only and this machine has no CUDA device (train.device "
                                     "auto trains on the CPU): use auto or off")


# Datasets whose classes are fixed; image folders are counted from their listing.
FIXED_CLASSES = {"digits": 10, "fashion-mnist": len(data.FASHION_CLASSES)}


def dataset_classes(d: DataSpec) -> int | None:
    """How many classes dataset ``d`` has, from its listing alone (no image decoded); None where that
    cannot be told without loading it (the job then says what is wrong with the data)."""
    if d.name in FIXED_CLASSES:
        return FIXED_CLASSES[d.name]
    path = d.path or (settings.cifar10() if d.name == "cifar10" else None)
    if d.name in ("cifar10", "imagefolder") and path:
        try:
            return len(data.describe_imagefolder(path)["classes"])
        except data.DataError:
            return None
    return None


def check_start_classes(spec: JobSpec, start_classes: int | None = None) -> None:
    """Refuse, before anything is queued, a starting model whose number of classes differs from the
    dataset's: ``model.checkpoint`` (read from its bundle; no model is built) or a finished
    ``model.from_run`` with ``start_classes``. Slimbench keeps a model's classifier: it fits no new head."""
    m = spec.model
    if m.checkpoint:
        try:
            start_classes = int(export.read_bundle(m.checkpoint)["arch_kwargs"]["num_classes"])
        except (export.BundleError, KeyError, TypeError, ValueError):
            return  # unreadable: the job fails with what is wrong with it, as a file damaged after queueing does
        field, what = "model.checkpoint", Path(m.checkpoint).name
    else:
        field, what = "model.from_run", f"run {m.from_run}"
    have = dataset_classes(spec.data) if start_classes is not None else None
    if have is not None and have != start_classes:
        raise SpecError(field, f"{what} is a {start_classes}-class model but dataset {spec.data.name} has {have} "
                        f"classes, and Slimbench keeps a model's classifier (it fits no new head): start from a "
                        f"model made for {have} classes, or train an architecture on this data (model.arch, "
                        "with ImageNet weights in model.pretrained if you have them)")


def starts_from_onnx(spec: JobSpec, store) -> bool:
    """Whether ``spec`` starts from a user's ONNX model: an ``onnx-fp32`` checkpoint, or a run (finished or
    queued) that starts from one, followed through ``model.from_run``."""
    m, seen = spec.model, set()
    while m.from_run and m.from_run not in seen and len(seen) < 64:
        seen.add(m.from_run)
        row = store.get(m.from_run)
        if row is None or not isinstance(row.get("spec"), dict) or \
                (row["spec"].get("method") or {}).get("name") not in ("baseline", None):
            return False  # only an "as given" run of an ONNX model is one (INT8 runs are refused as starts anyway)
        m = JobSpec.from_dict(row["spec"]).model
    if not m.checkpoint:
        return False
    try:
        return export.read_bundle(m.checkpoint).get("kind") == export.ONNX_FP32
    except export.BundleError:
        return False


def check_onnx_start(spec: JobSpec, store) -> None:
    """Refuse, when queued, a method that needs PyTorch weights on an ONNX model (the runner refuses it too)."""
    from . import onnx_models
    if not (spec.model.from_run or spec.model.checkpoint) or not starts_from_onnx(spec, store):
        return
    if spec.method.name not in onnx_models.METHODS:
        raise SpecError("method.name", f"{spec.method.name} {onnx_models.WHY_NOT}; on an ONNX model: "
                        f"{', '.join(onnx_models.METHODS)}")
    if spec.method.name == "baseline" and spec.train.epochs:
        raise SpecError("train.epochs", "an ONNX model cannot be trained here (it has no PyTorch weights): set 0 to "
                        "score and measure it as given")
