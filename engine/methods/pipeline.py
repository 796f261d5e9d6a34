"""An ordered list of methods, each run as its own linked run.

Step i runs as a normal child run (its own record, bundle and ONNX file) whose starting model is
step i-1's run (the first step starts from the pipeline's own model source); every child's
``parent`` in the store is the pipeline run. The pipeline run's model is the last step's model,
evaluated and measured again by the runner like any other result. When the last step is
``quantize_int8`` the pipeline rebuilds the INT8 model from that run's bundle (plus the FP32
model before it, the reference for size and speed), so the pipeline's own record is INT8 too.
"""
from __future__ import annotations

from typing import Any

from .. import export, layout
from ..errors import JobFailed
from ..spec import JobSpec, SpecError, short_key
from ..store import new_run_id
from . import Param, get, makes_torch_model, register, validate
from .quantize import Int8Model

NOT_A_STEP = ("pipeline",)          # no nesting: a pipeline's steps are plain methods


def _steps(params: dict, spec: JobSpec | None) -> list[dict[str, Any]]:
    steps = params["steps"]
    if not steps:
        raise SpecError("method.params.steps", "give at least one step, e.g. "
                        '[{"name": "prune_structured", "params": {...}}, {"name": "quantize_int8"}]')
    out = []
    for i, step in enumerate(steps):
        where = f"method.params.steps[{i}]"
        if not isinstance(step, dict):
            raise SpecError(where, f'must be an object {{"name": ..., "params": {{...}}}}, got {type(step).__name__}')
        extra = sorted(set(step) - {"name", "params"})
        if extra:
            raise SpecError(f"{where}.{short_key(extra[0])}", "unknown field; valid: name, params")
        if "name" not in step:
            raise SpecError(f"{where}.name", "missing: the method this step runs")
        name = step["name"]
        if not isinstance(name, str):
            raise SpecError(f"{where}.name", f"must be a method name (a string), got {type(name).__name__}")
        if name in NOT_A_STEP:
            raise SpecError(f"{where}.name", "a pipeline cannot contain another pipeline")
        if not makes_torch_model({"name": name}) and i != len(steps) - 1:
            raise SpecError(f"{where}.name", f"{name} makes an ONNX Runtime model that later steps cannot train; "
                            "put it last")
        try:
            checked = validate(name, step.get("params", {}), spec, where=where)
        except SpecError as e:  # cross-field checks name "method.params.x": point them at this step
            if e.field.startswith(where) or not e.field.startswith("method"):
                raise
            raise SpecError(where + e.field[len("method"):], str(e).split(": ", 1)[-1]) from None
        if i == 0 and spec is not None and spec.model.arch and get(name).needs_base:
            raise SpecError(f"{where}.name", f"{name} compresses a trained model but the pipeline starts from a "
                            "fresh arch: start from model.from_run, or make the first step baseline")
        out.append({"name": name, "params": checked})
    return out


def _check(params: dict, spec: Any) -> None:
    params["steps"] = _steps(params, spec)  # store the defaults filled in, as for any method


@register("pipeline", family="pipeline", needs_base=False, check=_check, params=[
    Param("steps", "list", [], 'ordered steps, each {"name": method, "params": {...}}; e.g. prune_structured, '
          "then distill, then quantize_int8"),
], help="Run several methods in order, each as its own linked run starting from the previous one; the pipeline's "
        "result is the last step's model.")
def pipeline(model, ctx, params):
    steps = _steps(params, ctx.spec)
    source = ctx.spec.to_dict()["model"]
    run_ids: list[str] = []
    summary: list[dict[str, Any]] = []
    for i, step in enumerate(steps):
        d = ctx.spec.to_dict()
        d["method"] = {"name": step["name"], "params": step["params"]}
        d["model"] = source if i == 0 else {"from_run": run_ids[-1]}
        d["name"] = f"{ctx.spec.name or 'pipeline'} · step {i + 1}/{len(steps)}: {step['name']}"
        ctx.log.info("pipeline step %d/%d: %s", i + 1, len(steps), step["name"])

        def echo(_i=i, _name=step["name"], **ev: Any) -> None:
            ctx.progress(**{**ev, "phase": f"step {_i + 1}/{len(steps)} {_name}: {ev.get('phase', '')}"})

        child_id = new_run_id()
        try:
            record = ctx.run_child(d, run_id=child_id, echo=echo)
        except JobFailed as e:  # the pipeline's error says which step, and which run has its log
            raise JobFailed(f"step {i + 1}/{len(steps)} {step['name']} (run {child_id}) failed: {e}") from e
        run_ids.append(record["run_id"])
        ctx.train_seconds += record.get("train_seconds") or 0.0
        summary.append({"step": i + 1, "method": step["name"], "run_id": record["run_id"], "arch": record["arch"],
                        **{k: record.get(k) for k in ("accuracy", "params", "macs", "size_bytes", "latency_ms",
                                                      "recovery_lr", "recovery_lr_source")}})
        # the steps' recovery rate (the last that fine-tuned) and the training rate they carried along
        ctx.extra.update({k: record[k] for k in ("recovery_lr", "recovery_lr_source", "training_lr")
                          if record.get(k) is not None})
    ctx.extra["pipeline_runs"] = run_ids
    ctx.extra["pipeline_steps"] = summary

    last = run_ids[-1]
    bundle = export.read_bundle(ctx.store.run_dir(last) / layout.CHECKPOINT)
    ctx.set_arch(bundle["arch"], bool(bundle["arch_kwargs"]["small_input"]))
    if bundle.get("kind") == export.ONNX_INT8:
        fp32 = ctx.load_run(run_ids[-2], "model.from_run")[0] if len(run_ids) > 1 else model
        return Int8Model.from_bundle(bundle, fp32.to("cpu").eval(), ctx, fp32_is_start=len(run_ids) == 1)
    return export.model_from_bundle(bundle, trust_code=True)  # a run of this workspace
