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
    if t.amp == "fp16" and t.device == "auto" and not gpu_count():
        raise SpecError("train.amp", "fp16 autocast is CUDA-only and this machine has no CUDA device (train.device "
                                     "auto trains on the CPU): use auto, bf16 or off")


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
        try:
            m = JobSpec.from_dict(row["spec"]).model
        except SpecError:   # a run recorded without a whole spec (older, or made by hand) is no ONNX start
            return False
    if not m.checkpoint:
        return False
    try:
        return export.read_bundle(m.checkpoint).get("kind") == export.ONNX_FP32
    except export.BundleError:
        return False


def check_onnx_start(spec: JobSpec, store) -> None:
    """Refuse, when queued, a method that needs PyTorch weights on an ONNX model (the runner refuses it too)."""
    if (spec.model.from_run or spec.model.checkpoint) and starts_from_onnx(spec, store):
        refuse_on_onnx(spec)


def refuse_on_onnx(spec: JobSpec) -> None:
    """Refuse (SpecError) a method needing PyTorch weights, or training, on a spec that starts from ONNX."""
    from . import onnx_models
    if spec.method.name not in onnx_models.METHODS:
        raise SpecError("method.name", f"{spec.method.name} {onnx_models.WHY_NOT}; on an ONNX model: "
                        f"{', '.join(onnx_models.METHODS)}")
    if spec.method.name == "baseline" and spec.train.epochs:
        raise SpecError("train.epochs", "an ONNX model cannot be trained here (it has no PyTorch weights): set 0 to "
                        "score and measure it as given")


# -- too little data to train from random weights ---------------------------------------------------
# When training an architecture from random weights is likely to learn little, and Experiments says so.
# `python -m bench.small_data` (ResNet-20 from scratch on Fashion-MNIST, batch 32, 2,000 test images)
# measured both causes. Images: with the same 200 optimisation steps, 10 / 30 / 100 / 300 images a class
# reached 0.59 / 0.68 / 0.68 / 0.73: on a simple 28 px set the plateau comes early, so ~100 a class is
# kept as the usual rule of thumb for photos, not as a measured cliff. Steps: 30 images a class reached
# 0.12 (chance: 0.10) after 10 steps, 0.23 after 30, 0.51 after 60 and 0.68 after 200. The report in issue 25
# (3 classes x 30 images, batch 64, 3 epochs: 6 steps) ended at chance, 0.333.
SCRATCH_MIN_PER_CLASS = 100
SCRATCH_MIN_STEPS = 50
# Training images of the built-in sets before validation is carved out (digits: scikit-learn's 1,797
# minus the seeded 20 % test split; the others: their official training splits).
BUILTIN_TRAIN_IMAGES = {"digits": 1797 - 1797 // 5, "fashion-mnist": 60_000, "cifar10": 50_000}


def train_images(d: DataSpec) -> tuple[int, int] | None:
    """(training images, classes) of dataset ``d`` from its listing alone, as ``data.load`` splits it
    (validation held out, then ``data.limit``); None where that cannot be told without loading the data."""
    classes = dataset_classes(d)
    if classes is None:
        return None
    if d.name in BUILTIN_TRAIN_IMAGES and not (d.name == "cifar10" and d.path):
        n = BUILTIN_TRAIN_IMAGES[d.name]
    else:
        try:
            counts = data.describe_imagefolder(d.path or settings.cifar10())["images"]
        except (data.DataError, TypeError):
            return None
        n = counts["train"] if "train" in counts else counts.get("all", 0) - counts.get("all", 0) // 5
    n -= int(round(n * d.val_fraction))   # held out for validation first; data.limit caps what is left
    return (min(n, d.limit) if d.limit else n), classes


def scratch_warning(d: DataSpec, epochs: int | None = None, batch_size: int | None = None) -> str | None:
    """Why training an architecture from random weights on ``d`` would likely learn little: too few
    images per class, or (given ``epochs`` and ``batch_size``) too few optimisation steps; None when
    neither, or when the images cannot be counted from a listing."""
    counted = train_images(d)
    if counted is None or counted[1] < 1:
        return None
    n, classes = counted
    per_class = n / classes
    steps = epochs * -(-n // batch_size) if epochs and batch_size else None
    parts = []
    if per_class < SCRATCH_MIN_PER_CLASS:
        parts.append(f"about {per_class:.0f} training images per class ({n} images, {classes} classes) is little to "
                     f"learn from random weights (under ~{SCRATCH_MIN_PER_CLASS} a class, a common rule of thumb)")
    if steps is not None and steps < SCRATCH_MIN_STEPS:
        parts.append(f"{epochs} epoch(s) at batch {batch_size} are only {steps} optimisation steps, too few for random "
                     f"weights to learn much (aim for {SCRATCH_MIN_STEPS}+: more epochs or a smaller batch; python -m "
                     "bench.small_data measures both)")
    return "; ".join(parts) + ". Start from ImageNet weights with a frozen backbone" if parts else None
