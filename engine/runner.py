"""Run one job end to end: data -> model -> method -> evaluate -> export -> measure -> record."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import logging
import math
import os
import platform
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from . import data as data_mod
from . import (child_runs, deploy, export, import_weights, layout, measure, methods, models, onnx_models, procs, runtimes,
               settings, tracking, training, user_models)
from . import record as record_schema
from .context import Context
from .devices import resolve_device
from .errors import Cancelled, JobFailed, LeaseLost
from .spec import DataSpec, JobSpec, SpecError
from .store import Store, disk_full_reason, is_disk_full
from .validation import check_spec, refuse_on_onnx

log = logging.getLogger("slimbench.run")
TEST_METRICS = ("accuracy", "accuracy_ci95", "top5", "roc_auc", "per_class_accuracy", "confusion")


def load_run_model(store: Store, run_id: str, field: str = "model.from_run") -> tuple[nn.Module, dict[str, Any]]:
    """A finished run's PyTorch model and bundle; errors name ``field``, the spec field that chose it."""
    row = store.get(run_id)
    if row is None:
        raise SpecError(field, f"no run {run_id!r} in {store.root}")
    if row["state"] != "done":
        raise SpecError(field, f"run {run_id} is {row['state']}, not done")
    try:  # a run here whose model a Python file builds ran under that file's opt-in; its sha256 is checked
        return export.load_model(store.run_dir(run_id) / layout.CHECKPOINT, trust_code=True)
    except export.BundleError as e:
        raise SpecError(field, f"run {run_id}: {e}") from None


def _child_runner(store: Store, parent: str, cancelled: Callable[[], bool]) -> Callable[..., dict[str, Any]]:
    """``ctx.run_child``: a spec run as a child of run ``parent`` (its own run row, record and artifacts)."""
    def run_child(spec: dict[str, Any] | JobSpec, *, run_id: str | None = None,
                  echo: Callable[..., None] | None = None,
                  stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        # ``stop``: the parent ends this child alone (a search pruning a trial); Cancelled is raised either way
        halt = cancelled if stop is None else (lambda: cancelled() or stop())
        return run_spec(spec, store, run_id=run_id, echo=echo, cancelled=halt, parent=parent)
    return run_child


class _StoreCancelled:
    """``cancelled()`` of a child run started apart, read at most every 0.5 s: the store's cancel request, or
    its search gone (``search_gone``), ``why`` then saying so. A search that dies (killed, its machine lost)
    cancels nothing itself: its Ray tasks would run on to the end as orphans, so each trial watches it."""

    def __init__(self, store: Store, run_id: str, parent: str | None = None):
        self.store, self.run_id, self.parent, self.next, self.value, self.why = store, run_id, parent, 0.0, False, ""

    def __call__(self) -> bool:
        if not self.value and time.monotonic() >= self.next:
            self.next = time.monotonic() + 0.5
            self.value = self.run_id in self.store.cancel_requested([self.run_id])
            if not self.value and self.parent:
                self.why = search_gone(self.store, self.parent)
                self.value = bool(self.why)
        return self.value


def search_gone(store: Store, search_id: str) -> str:
    """Why the search ``search_id`` no longer runs ('' = it does): it ended, or its row is still running but
    silent past ``settings.stale_s()`` (its process died: the same test the queue marks dead jobs by)."""
    row = store.get(search_id)
    if row is None:
        return f"its search {search_id} no longer exists"
    if row["state"] != "running":
        return f"its search {search_id} ended ({row['state']}) while this trial ran"
    silent = time.time() - (row["heartbeat"] or time.time())
    if silent > settings.stale_s():
        return (f"its search {search_id} stopped: no heartbeat for {silent:.0f} s (its process died), so this "
                "trial stopped rather than run on as an orphan")
    return ""


def _child_entry(home: str, run_id: str, parent: str, threads: int) -> int:
    """A child run in a process or Ray task of its own (``ctx.start_child``); its row already holds its spec."""
    torch.set_num_threads(max(1, threads))
    store = Store(home)
    halt = _StoreCancelled(store, run_id, parent)
    try:
        run_spec(store.get(run_id)["spec"], store, run_id=run_id, parent=parent, cancelled=halt)
    except Cancelled:   # recorded in the store by run_spec; why, where its search went
        if halt.why:
            store.update(run_id, error=halt.why)
        return 1
    except (JobFailed, SpecError):   # recorded in the store by run_spec
        return 1
    return 0


def _child_starter(store: Store, parent: str) -> Callable[..., Any]:
    """``ctx.start_child``: a child run's row made now (state running, so no worker claims it), the run
    itself started in a process or Ray task (``child_runs``); cancel it with ``store.request_cancel``."""
    def start_child(spec: dict[str, Any] | JobSpec, *, run_id: str, threads: int = 1) -> Any:
        spec = check_spec(spec)
        store.create(spec.to_dict(), state="running", run_id=run_id, parent=parent)
        gpus = 1 if str(spec.train.device).startswith("cuda") else 0
        return child_runs.start(_child_entry, (str(store.root), run_id, parent, threads), threads, str(store.root),
                                store.run_dir(run_id) / layout.LOG, gpus=gpus)
    return start_child


def _progress_sink(store: Store, run_id: str, echo: Callable[..., None] | None,
                   lease: str | None = None) -> Callable[..., None]:
    """Record progress events (throttled to ~2/s, epoch ends always; refused once ``lease`` no longer
    holds the run) and echo them."""
    last = [0.0]

    def progress(**ev: Any) -> None:
        now = time.monotonic()
        final = ev.get("phase", "").endswith(":val") or ev.get("step") == ev.get("steps")
        if final or now - last[0] >= 0.5:
            last[0] = now
            store.add_event(run_id, ev, lease=lease)
        if echo is not None:
            echo(**ev)
    return progress


def run_spec(spec: JobSpec | dict[str, Any], store: Store | None = None, *, run_id: str | None = None,
            echo: Callable[..., None] | None = None, cancelled: Callable[[], bool] = lambda: False,
            parent: str | None = None, lease: str | None = None) -> dict[str, Any]:
    """Run ``spec`` (checked here against the registries too); returns the result record. The run row
    is created unless ``run_id`` exists. ``lease``: the token of a claimed job's attempt; every write to
    the run's row and folder checks it, and :class:`LeaseLost` stops the run, writing nothing more,
    once a later attempt holds it."""
    spec = check_spec(spec)
    store = store or Store()
    if run_id is None or store.get(run_id) is None:
        run_id = store.create(spec.to_dict(), state="running", run_id=run_id, parent=parent)
    row = store.get(run_id)
    pid = os.getpid()
    store.update(run_id, lease=lease, state="running", started=time.time(), attempts=(row["attempts"] or 0) + 1,
                 error=None, heartbeat=time.time(), pid=pid, host=procs.host(), pid_start=procs.start_time(pid))
    run_dir = store.run_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / layout.LOG, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root_logger = logging.getLogger("slimbench")
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.INFO)
    try:
        with _heartbeat(store, run_id) if row["worker"] is None else contextlib.nullcontext():
            export.atomic_write_bytes(run_dir / layout.SPEC, json.dumps(spec.to_dict(), indent=2).encode())
            record, card = _run(spec, store, run_id, run_dir, _progress_sink(store, run_id, echo, lease), cancelled,
                                lease)
            log.info("done: accuracy %.4f, size %d bytes", record["accuracy"], record["size_bytes"])
            # Last statement of the try: once the store says "done", an interrupt (e.g. a backend stopping
            # the task) can no longer reach the clean-up below and delete the finished artifacts. The
            # result files appear with the "done" (and a cleared error, such as a stale "interrupted"),
            # in one transaction that checks the lease: a later attempt's folder is never written.
            store.publish(run_id, lease, lambda: _write_results(run_dir, record, card),
                          state="done", record=record, finished=time.time(), error=None)
    except LeaseLost as e:  # the run folder and row are a later attempt's now: leave both alone
        log.warning("stopped: %s", e)
        raise
    except Cancelled:
        log.info("cancelled")
        store.end_without_result(run_id, "cancelled", "cancelled by request", lease)
        raise
    except BaseException as e:
        reason = _one_line(e, run_dir)
        log.error("failed: %s\n%s", reason, traceback.format_exc())
        store.end_without_result(run_id, "failed", reason, lease)
        raise JobFailed(reason) from e
    else:
        if parent is None and tracking.wanted(spec.track.mlflow):  # a pipeline's steps go nested under it
            _track(store, run_id)
        return record
    finally:
        root_logger.removeHandler(handler)
        handler.close()


def _track(store: Store, run_id: str) -> None:
    """Log the finished run to MLflow. The run is done whatever happens here: a store that cannot be
    reached or refuses the write is said in the log, on stderr and (``mlflow.json``) on Compare."""
    uri = tracking.tracking_uri()
    try:
        mlflow_id = tracking.log_run(store, run_id, uri)
    except Exception as e:
        why = (tracking.status(store.run_dir(run_id)) or {}).get("error") or repr(e)
        log.warning("not logged to MLflow at %s: %s", uri, why)
        print(f"warning: run {run_id} finished but was not logged to MLflow at {uri}: {why}", file=sys.stderr)
    else:
        log.info("logged to MLflow at %s as run %s", uri, mlflow_id)


def _write_results(run_dir: Path, record: dict[str, Any], card: dict[str, Any]) -> None:
    export.atomic_write_bytes(run_dir / layout.RESULT, json.dumps(record, indent=2, allow_nan=False).encode())
    export.atomic_write_bytes(run_dir / layout.CARD, json.dumps(card, indent=2, default=_json_default).encode())


@contextlib.contextmanager
def _heartbeat(store: Store, run_id: str):
    """A run in the foreground (``engine run``, no worker) beats on its own, so that one whose
    process is killed is found stale and marked interrupted (it stayed "running" for ever)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(settings.heartbeat_s()):
            try:
                store.update(run_id, heartbeat=time.time())
            except Exception:  # a locked database: the next beat tries again
                pass
    thread = threading.Thread(target=beat, name=f"heartbeat-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _one_line(e: BaseException, run_dir: Path) -> str:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return "CUDA out of memory: lower data.batch_size or use a smaller model"
    if is_disk_full(e, run_dir):
        return disk_full_reason(e, run_dir)
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    # SpecError and JobFailed (a pipeline step's) already read as a reason; others need their type
    return msg[:500] if isinstance(e, (SpecError, JobFailed)) else f"{type(e).__name__}: {msg}"[:500]


def _starting_model(spec: JobSpec, store: Store, data: data_mod.DataBundle):
    """(model, arch, small_input, base record or None, parent run id or None, data to use)."""
    m = spec.model
    if m.arch:
        small = m.small_input if m.small_input is not None else models.auto_small_input(data.image_size)
        model = models.build(m.arch, data.num_classes, small)
        models.check_input_fits(model, m.arch, data.input_shape, "model.arch")
        if m.pretrained:
            skipped = models.load_imagenet_weights(model, m.pretrained, m.freeze_backbone)
            log.info("loaded ImageNet weights from %s; not transferred: %s", m.pretrained, ", ".join(skipped) or "none")
        elif spec.train.zero_init_residual:  # from scratch only (engine.spec refuses it on trained weights)
            log.info("zero-initialised the last BatchNorm of %d residual blocks", models.zero_init_residual(model))
        return model, m.arch, small, None, None, data
    if m.file:
        model, data = _user_model(m, data)
        return model, user_models.describe_ref(user_models.source_of(model)), False, None, None, data
    onnx = _onnx_start(spec, store)
    if onnx is not None:
        model, bundle = onnx
        parent = m.from_run
    elif m.from_run:
        model, bundle = load_run_model(store, m.from_run)
        parent = m.from_run
    else:
        try:
            model, bundle = export.load_model(m.checkpoint, trust_code=m.trust_code)
        except export.BundleError as e:
            raise SpecError("model.checkpoint", str(e)) from None
        parent = None
    kw, meta = bundle["arch_kwargs"], bundle.get("meta", {})
    if int(kw["num_classes"]) != data.num_classes:
        raise SpecError("model", f"the starting model has {kw['num_classes']} classes but dataset "
                        f"{data.name} has {data.num_classes}")
    if meta.get("input_size") and list(meta["input_size"]) != list(data.input_shape):
        raise SpecError("model", f"the starting model expects input {meta['input_size']} but the data gives "
                        f"{list(data.input_shape)}; set data.image_size to {meta['input_size'][-1]}")
    if not meta.get("input_size") and onnx is None:  # an imported model: no input size recorded: check this one fits
        models.check_input_fits(model, bundle["arch"], data.input_shape, "model.checkpoint")
    # a run of this workspace: its whole record (how it trained: the recovery rate rewinds to it); a bundle: its metrics
    start = (store.get(parent) or {}).get("record") if parent else None
    return model, bundle["arch"], bool(kw.get("small_input")), start or {**bundle.get("metrics", {})}, parent, \
        _with_start_preprocessing(data, meta)


def _onnx_start(spec: JobSpec, store: Store) -> tuple[onnx_models.OnnxModel, dict[str, Any]] | None:
    """The user's ONNX model (engine.onnx_models) a job starts from, with its bundle; None for a PyTorch start.
    Only the methods that need no PyTorch weights run on it, and it is not trained: refused otherwise."""
    m = spec.model
    row = store.get(m.from_run) if m.from_run else None
    if m.from_run and (row is None or row["state"] != "done"):
        return None  # load_run_model says why
    path = store.run_dir(m.from_run) / layout.CHECKPOINT if m.from_run else m.checkpoint
    try:
        bundle = export.read_bundle(path)
    except export.BundleError:
        return None  # the PyTorch loader says what is wrong with it
    if bundle.get("kind") != export.ONNX_FP32:
        return None
    refuse_on_onnx(spec)
    try:
        return onnx_models.OnnxModel.from_bundle(bundle, spec.measure.threads), bundle
    except export.BundleError as e:
        raise SpecError("model.from_run" if m.from_run else "model.checkpoint", str(e)) from None


def _user_model(m, data: data_mod.DataBundle) -> tuple[nn.Module, data_mod.DataBundle]:
    """The model of ``model.file`` (engine.user_models), checked against the data before any training,
    and the data normalised as its weights were trained (a fresh Python-file model: the data's own)."""
    kind, path, builder = user_models.parse_ref(m.file)
    try:
        if kind == "python":
            source = user_models.python_source(path, builder, m.builder_kwargs)
            model = user_models.build_python(source, data.num_classes, trust_code=m.trust_code)
            if m.weights:
                try:
                    sd = import_weights.read_state_dict(m.weights)
                except export.BundleError as e:
                    raise SpecError("model.weights", str(e)) from None
                problems = export.fit_problems(model, sd)
                if problems:
                    raise SpecError("model.weights", f"{Path(m.weights).name} does not fit {source['name']}:"
                                    f"{builder}: " + " | ".join(problems))
                model.load_state_dict({**model.state_dict(), **sd})
        else:
            model = user_models.load_program(path, path.name)
            shape = user_models.program_input_shape(model)
            if tuple(shape) != tuple(data.input_shape):
                raise SpecError("model.file", f"{path.name} was exported for inputs {list(shape)} but the data gives "
                                f"{list(data.input_shape)}; set data.image_size to {shape[-1]}"
                                + (" (and use data with as many channels)" if shape[0] != data.input_shape[0] else ""))
    except user_models.UserModelError as e:
        raise SpecError("model.file", str(e)) from None
    _check_outputs(model, data, m.file)
    trained = kind == "program" or bool(m.weights)
    if not trained:
        return model, data
    norm = import_weights.normalisation(import_weights.parse_normalisation(m.normalisation or "dataset"))
    return model, _with_start_preprocessing(data, norm)


@torch.no_grad()
def _check_outputs(model: nn.Module, data: data_mod.DataBundle, ref: str) -> None:
    """A user's model answers a batch of two of this data's inputs with one logit per class, or is refused."""
    was = model.training
    try:
        out = model.eval()(torch.zeros((2, *data.input_shape)))
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        how = ("a program must be exported with a dynamic batch (dynamic_shapes={0: torch.export.Dim('batch')})"
               if ref.endswith(".pt2") else "its forward must take a batch of N x C x H x W images")
        raise SpecError("model.file", f"{ref} cannot take a batch of two {list(data.input_shape)} inputs "
                        f"({type(e).__name__}: {msg}); {how}") from None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, data.num_classes):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SpecError("model.file", f"{ref} answers {got} for a batch of 2, but dataset {data.name} needs one "
                        f"logit per class: [2, {data.num_classes}]")


def _with_start_preprocessing(data: data_mod.DataBundle, meta: dict[str, Any]) -> data_mod.DataBundle:
    """The data normalised as the starting model was trained. Each job derives mean/std from its own
    training images, so a job with another ``data.limit`` would otherwise feed the model shifted
    inputs, and every accuracy it measured (the start's and the result's) would carry that shift."""
    names = meta.get("class_names")
    if names and list(names) != list(data.class_names):
        log.warning("the starting model's classes %s differ from this data's %s: outputs are matched by index",
                    names[:10], data.class_names[:10])
    if meta.get("normalisation") == "dataset":  # an imported model declared to take its data's own statistics
        log.info("normalising with this data's own mean/std, as declared when the model was imported")
        return data
    mean, std = meta.get("mean"), meta.get("std")
    # One or three values broadcast over either channel count (grey data becomes RGB normalised per channel).
    if not mean or not std or len(mean) != len(std) or len(mean) not in (1, 3):
        log.warning("the starting model records no normalisation; using this data's own")
        return data
    return dataclasses.replace(data, mean=[float(v) for v in mean], std=[float(v) for v in std])


def _run(spec: JobSpec, store: Store, run_id: str, run_dir: Path, progress, cancelled,
         lease: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's record and model card; its artifacts (bundle, ONNX) are written, the result files not."""
    t_start = time.time()
    method = methods.get(spec.method.name)
    device = resolve_device(spec.train.device)
    # train.seed also fixes a fresh architecture's initial weights (and students'), not only training:
    # without it the same spec trained to a different model in every process.
    torch.manual_seed(spec.train.seed)
    progress(phase="data")
    data = data_mod.load(spec.data, device.type)
    for note in data.notes:
        log.warning(note)
    log.info("data %s: %d train / %d val / %d test images, %d classes, input %s", data.name, len(data.train),
             len(data.val), len(data.test), data.num_classes, data.input_shape)
    model, arch, small, base_record, parent, data = _starting_model(spec, store, data)
    clock = _PhaseClock(t_start)
    clock.lap("data")
    fresh = spec.model.arch or (spec.model.file and not spec.model.file.endswith(".pt2") and not spec.model.weights)
    # an ONNX model is never changed in place (its methods make new ones): it is its own untouched copy
    base = None if fresh else model if isinstance(model, onnx_models.OnnxModel) else copy.deepcopy(model).eval()
    ctx = Context(spec=spec, data=data, device=device, store=store, run_id=run_id, run_dir=run_dir, arch=arch,
                  small_input=small, load_run=functools.partial(load_run_model, store),
                  run_child=_child_runner(store, run_id, cancelled), start_child=_child_starter(store, run_id),
                  base=base, base_record=base_record,
                  progress=progress, cancelled=cancelled, log=log)
    log.info("method %s %s on %s (%s)", method.name, json.dumps(spec.method.params), arch, device)
    progress(phase="method", method=method.name)
    out = method.fn(model, ctx, spec.method.params)
    if cancelled():
        raise Cancelled()
    clock.lap("method")

    progress(phase="evaluate")
    record: dict[str, Any] = {"run_id": run_id, "status": "done", "name": spec.name, "experiment": spec.experiment,
                              "group": spec.group, "method": method.name,
                              "method_params": spec.method.params, "arch": ctx.arch, "small_input": ctx.small_input,
                              "dataset": data.name, "num_classes": data.num_classes,
                              "input_size": list(data.input_shape), "parent": parent,
                              "device": str(device), "train_seconds": ctx.train_seconds,
                              "best_val_acc": ctx.best_val_acc, "best_val_phase": ctx.best_val_phase, "history": ctx.history,
                              "notes": [*data.notes, *ctx.notes()], "bn_recalibration_images": ctx.recalibration_images,
                              "training_lr": ctx.training_lr()}
    if ctx.recovery is not None:
        record.update({"recovery_lr": ctx.recovery.lr, "recovery_lr_source": ctx.recovery.source})
    rt = runtimes.of(out, device)
    logits, ys = rt.predict(data, cancelled)
    metrics = training.classification_metrics(logits, ys, data.num_classes, full=True)
    record.update({k: metrics[k] for k in TEST_METRICS})
    record["test_images"] = metrics["n"]
    record["test_set_hash"] = test_set_hash(data.test)
    record["data_path"] = _data_path(spec.data)
    record.update(_against_start(ctx, logits, ys))
    clock.lap("evaluate")
    progress(phase="export")
    if lease is not None:  # the model files go straight to the run folder: only while this attempt holds it
        store.check_lease(run_id, lease)
    record.update(rt.save(ctx, run_dir, {k: record[k] for k in TEST_METRICS}))
    record["compressed_bytes"] = measure.deflated_bytes(record["checkpoint"])
    clock.lap("export")
    progress(phase="measure")
    with measure.timing_lock(store.root) as waited:   # concurrent jobs of this workspace time one at a time
        if waited >= 1:
            log.info("waited %.1f s for another job's timing to finish", waited)
        if rt.module is None:  # no PyTorch graph (a user's ONNX model): counted on its ONNX graph
            record.update(rt.static_metrics(data.input_shape))
            record.update(measure.measure_speed(rt.timing("cpu"), data.input_shape, torch.device("cpu"),
                                               spec.measure.batch_size, spec.measure.latency_runs,
                                               spec.measure.warmup_runs, spec.measure.threads))
            record["cpu_model"] = measure.cpu_model()
        else:
            record.update(measure.measure_model(rt.module, data.input_shape, spec.measure, timing=rt.timing))
        record.update(_paired(ctx, rt, parent))
        if spec.measure.deploy:
            progress(phase="measure:deploy")
            record.update(_deploy(ctx, rt, record))
    clock.lap("measure")
    record["phase_seconds"] = clock.phases(ctx.train_seconds)
    record["val_images"] = len(data.val)
    if ctx.recipe is not None:
        record["recipe"] = {**ctx.recipe, "zero_init_residual": spec.train.zero_init_residual}
    record.update(ctx.extra)
    record.update({"spec": spec.to_dict(), "started": t_start, "finished": time.time(),
                   "torch": torch.__version__, "host": platform.node(), "cpu": platform.processor() or platform.machine(),
                   "python": sys.version.split()[0]})
    # Strict JSON: an undefined figure (e.g. ROC AUC of a one-class test set) is null, never NaN.
    record = _finite(json.loads(json.dumps(record, default=_json_default)))
    return record, model_card(record, data)


class _PhaseClock:
    """Wall seconds of a job's phases, each lap the time since the last."""

    def __init__(self, start: float):
        self.last, self.laps = start, {}

    def lap(self, name: str) -> None:
        now = time.time()
        self.laps[name], self.last = now - self.last, now

    def phases(self, train_seconds: float) -> dict[str, float]:
        """data, train (the method's training epochs, validation included), method (the rest of the method:
        cutting, calibrating, searching), evaluate (the test set, and the start on it), export, measure."""
        laps = dict(self.laps)
        method = laps.pop("method", 0.0)
        train = min(train_seconds, method)
        return {k: round(v, 3) for k, v in {"data": laps.get("data", 0.0), "train": train, "method": method - train,
                                            **{k: laps.get(k, 0.0) for k in ("evaluate", "export", "measure")}}.items()}


def model_card(record: dict[str, Any], data: data_mod.DataBundle) -> dict[str, Any]:
    """card.json: the record's card fields (the schema says which), class names and input normalisation."""
    card = {k: record.get(k) for k in record_schema.card_keys()}
    card["class_names"] = data.class_names
    channels = data.input_shape[0]  # one grey value is applied to every channel the model takes: say so
    card["normalisation"] = {k: list(v) * channels if len(v) == 1 else list(v)
                             for k, v in (("mean", data.mean), ("std", data.std))}
    return _finite(card)


def test_set_hash(split: data_mod.Split) -> str:
    """sha256 of a test split's content (``Split.content_hash``: what the model was scored on). Two
    test sets of equal name and size but other images (two zips passed as ``cifar10``, two image
    folders) differ here, and only runs with equal hashes compare their accuracies."""
    return split.content_hash()


def _data_path(d: DataSpec) -> str | None:
    """Where the data came from: the spec's path or the dataset's configured default, resolved (None for
    data that ships with a library, e.g. scikit-learn's digits)."""
    path = d.path or {"cifar10": settings.cifar10(), "fashion-mnist": settings.fashion_mnist()}.get(d.name)
    return str(Path(path).expanduser().resolve()) if path else None


def _against_start(ctx: Context, logits: torch.Tensor, ys: torch.Tensor) -> dict[str, Any]:
    """The starting model on the same test images, in this job: its accuracy there (the honest
    reference for "Δ accuracy", whatever split its own job used), agreement and flipped answers."""
    if ctx.base is None:
        return {}
    ctx.progress(phase="evaluate:start")
    start_logits, start_ys = training.predict(ctx.base.to(ctx.device), ctx.data.loader("test", ctx.device),
                                              ctx.device, ctx.cancelled)
    ctx.base.to("cpu")
    if not torch.equal(start_ys, ys):
        raise RuntimeError("the test loader yielded a different order on a second pass")
    return training.against_start(logits, start_logits, ys, ctx.data.num_classes)


def _paired(ctx: Context, rt: runtimes.Runtime, parent: str | None) -> dict[str, Any]:
    """Speed-ups timed interleaved in this process (see ``measure.paired_speedup``), where comparing
    latencies recorded by two jobs minutes apart is not honest. ``paired_speedup`` means one thing in
    every record: x faster than the model the run started from, in the same runtime. For a runtime
    with a reference (INT8: its fp32 model under ONNX Runtime) that is the reference's figure (also
    under the reference's own key, ``int8_speedup``) where the reference is the run's start, and
    none where it is not (a pipeline ending in INT8: its steps' records carry theirs); the start run
    eagerly in PyTorch against this runtime (quantisation and the change of runtime together) is
    ``speedup_vs_eager_start``. CPU always; CUDA too where a GPU is present and the runtime runs there."""
    cfg = ctx.spec.measure
    rec: dict[str, Any] = {}
    ref = rt.reference()
    own: dict[str, Any] | None = None   # the start timed against this model in its runtime, if it was
    if ref is not None:
        p = measure.paired_speedup(ref.fn, rt.timing("cpu"), ctx.input_shape, torch.device("cpu"), cfg.latency_runs,
                                   cfg.warmup_runs, cfg.threads, rounds=cfg.paired_rounds or 5)
        rec[ref.latency_key] = p["ref_latency_ms"]
        rec[ref.speedup_key] = p["speedup"]
        rec[f"{ref.speedup_key}_range"] = [p["speedup_min"], p["speedup_max"]]
        if ref.of_start:
            own = {"speedup": p["speedup"], "range": rec[f"{ref.speedup_key}_range"]}
    if ctx.base is None or cfg.paired_rounds == 0:
        return rec
    ctx.progress(phase="measure:paired")
    rec["paired_ref"] = parent or "checkpoint"
    for dev in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        cand = rt.timing(dev)
        if cand is None:
            continue
        p = measure.paired_speedup(ctx.base.to(dev), cand, ctx.input_shape, torch.device(dev), cfg.latency_runs,
                                   cfg.warmup_runs, cfg.threads, rounds=cfg.paired_rounds)
        pre = "" if dev == "cpu" else "gpu_"
        against_eager = {"speedup": p["speedup"], "range": [p["speedup_min"], p["speedup_max"]]}
        if ref is not None and dev == "cpu":  # the start ran under another runtime than this model
            rec[f"{pre}speedup_vs_eager_start"] = against_eager["speedup"]
            rec[f"{pre}speedup_vs_eager_start_range"] = against_eager["range"]
            against_start = own   # None: no timing of the start under this runtime (a pipeline's INT8)
        else:
            against_start = against_eager
        if against_start is not None:
            rec[f"{pre}paired_speedup"] = against_start["speedup"]
            rec[f"{pre}paired_speedup_range"] = against_start["range"]
        rec.update({f"{pre}paired_{k}": p[k] for k in ("threads", "threads_fallback", "load_avg", "cpu_share", "loaded")})
        if p["threads_fallback"]:
            ctx.log.warning("paired speed-up %s", p["threads_fallback"])
    ctx.base.to("cpu")
    if rt.module is not None:
        rt.module.to("cpu")
    return rec


def _test_images(data: data_mod.DataBundle, n: int) -> torch.Tensor:
    """The first ``n`` test images (as the model takes them, rounded to float16), what deployed artefacts are
    checked on. Filled into one tensor batch by batch: a list joined at the end held them twice. Float16 halves
    what a job holds for this (1,000 images at 224 px: 0.3 GB, not 0.6); PyTorch's reference and every runtime
    see the same rounded images, cast back to float32 a batch at a time (``deploy.reference_logits``), so the
    top-1 agreement compares like with like."""
    out, i = None, 0
    for x, _ in data.loader("test", "cpu", batch_size=256, limit=n):
        if out is None:
            out = torch.empty((min(n, len(data.test)), *x.shape[1:]), dtype=torch.float16)
        out[i:i + len(x)] = x
        i += len(x)
    return out[:i] if out is not None else torch.empty(0)


def _deploy(ctx: Context, rt: runtimes.Runtime, record: dict[str, Any]) -> dict[str, Any]:
    """The FP32 result deployed in every runtime here (``engine.deploy``): each artefact verified against
    PyTorch and timed; the best runtime's latency; and the speed-up over the start with both in the
    runtime this model ships in (its start exported there too), so the runtime's own gain is never
    credited to compression."""
    if rt.module is None:   # a user's ONNX model: timed as given by the runner, nothing to export
        return {"deploy": {"note": "FP32 deployment only: this result has no PyTorch graph to export"}}
    model = rt.module.to("cpu").eval()
    if not isinstance(rt, runtimes.TorchRuntime) or any(p.dtype != torch.float32 for p in model.parameters()):
        return {"deploy": {"note": "FP32 deployment only: this result is not an FP32 PyTorch model"}}
    cfg, shape = ctx.spec.measure, ctx.input_shape
    plan = deploy.Plan(model=model, input_shape=shape, folder=ctx.run_dir, images=_test_images(ctx.data, cfg.verify_images),
                       cfg=cfg, bundle_path=Path(record["checkpoint"]),
                       onnx_path=Path(record["onnx"]) if record.get("onnx") else None,
                       devices=("cpu", "cuda") if torch.cuda.is_available() else ("cpu",))
    entries = deploy.deploy_all(plan, eager_cpu=record, log=lambda m: ctx.log.warning("deploy: %s", m))
    for name, e in entries.items():
        if e.get("verified") is False:   # shipped anyway, but never picked as the best runtime
            ctx.log.warning("%s gives PyTorch's top-1 on only %.1f%% of %d test images", name,
                            100 * e["agreement"], e["verified_images"])
    rec: dict[str, Any] = {"deploy": entries}
    fastest, shipped = deploy.best(entries), deploy.best(entries, shippable=True)
    if fastest:
        rec.update(best_runtime=fastest, best_latency_ms=entries[fastest]["latency_ms"],
                   best_throughput=entries[fastest].get("throughput"),
                   best_energy_mj_per_image=entries[fastest].get("energy_mj_per_image"))
    if shipped:
        rec.update(best_artefact_runtime=shipped,
                   best_artefact=entries[shipped].get("artefact") or record["checkpoint"])
    if ctx.base is None or cfg.paired_rounds == 0 or not shipped:
        return rec
    ctx.progress(phase="measure:deploy_paired")
    start_macs = measure.count_macs(ctx.base.to("cpu").eval(), shape)["macs"]
    cut = start_macs / record["macs"] if record.get("macs") else None
    name = shipped   # where this model ships; its start is exported to the same runtime and timed there
    if name == "eager":
        p = {"speedup": record.get("paired_speedup"), "range": record.get("paired_speedup_range")}
    else:
        threads = measure.timing_threads(cfg.threads)
        with tempfile.TemporaryDirectory(dir=ctx.run_dir) as tmp:
            base_fn = deploy.predictor_for(name, ctx.base, shape, Path(tmp), threads)
            cand_fn = deploy.DEPLOYMENTS[name].load(Path(entries[name]["artefact"]), model, "cpu", threads)
            t = measure.paired_speedup(base_fn, cand_fn, shape, torch.device("cpu"), cfg.latency_runs,
                                       cfg.warmup_runs, cfg.threads, rounds=cfg.paired_rounds)
        p = {"speedup": t["speedup"], "range": [t["speedup_min"], t["speedup_max"]]}
        rec["deploy_paired_threads_fallback"] = t["threads_fallback"]
        rec["deploy_paired_loaded"] = t["loaded"]
    rec.update(deploy_paired_runtime=name, deploy_paired_speedup=p["speedup"], deploy_paired_speedup_range=p["range"],
               start_x_fewer_macs=cut)
    if cut and cut > 1.05 and p["speedup"]:   # a model with fewer MACs: how much of the cut became speed
        rec["speedup_per_mac_cut"] = p["speedup"] / cut
        if record.get("paired_speedup"):
            rec["eager_speedup_per_mac_cut"] = record["paired_speedup"] / cut
    return rec


def _finite(o: Any) -> Any:
    """``o`` with every NaN or infinite float replaced by None (JSON's null)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_finite(v) for v in o]
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)
