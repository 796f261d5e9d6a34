"""Ready-made experiment plans: a baseline plus every registered compression method.

A plan is a list of spec dicts. A spec may start from an earlier spec of the same plan through
``model.from_run = ref(i)`` (a placeholder replaced by that job's id at launch; the worker lets a
queued job name a queued parent). Presets are built from the method registry, so a method
appears in them as soon as it is registered.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

from . import methods, settings
from .errors import SpecError
from .validation import check_spec

REF_PREFIX = "PLAN-"


def ref(i: int) -> str:
    """Placeholder run id meaning "the job launched from spec i of this plan"."""
    return f"{REF_PREFIX}{i}"


BASE = ref(0)
SHARED_CIFAR10 = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "cifar10.zip"


# A pipeline in the tours: prune then quantize, the classic combination (steps that are registered).
PIPELINE_STEPS = ("prune_structured", "quantize_int8")
# Small settings beyond epoch counts: sensitivity at its defaults prunes 32 layers x 3 ratios.
QUICK_OVERRIDES: dict[str, dict[str, Any]] = {"sensitivity": {"max_layers": 8, "ratios": [0.3, 0.6]}}


def _quick_params(method: methods.Method) -> dict[str, Any]:
    """Defaults, with every epoch-count parameter at its smallest useful value (1, or its lower bound)."""
    params: dict[str, Any] = {}
    for p in method.params:
        if p.kind == "int" and "epoch" in p.name and p.default is not None:
            floor = int(p.low) + (1 if p.low_open else 0) if p.low is not None else 0
            params[p.name] = max(floor, min(int(p.default), 1))
    if method.name == "pipeline":
        params["steps"] = _pipeline_steps(_quick_params)
    return {**params, **QUICK_OVERRIDES.get(method.name, {})}


def _pipeline_steps(param_fn: Callable[[methods.Method], dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": n, "params": param_fn(methods.METHODS[n])} for n in PIPELINE_STEPS if n in methods.METHODS]


def _default_params(method: methods.Method) -> dict[str, Any]:
    return {"steps": _pipeline_steps(_default_params)} if method.name == "pipeline" else {}


def _plan(name: str, data: dict, arch: str, base_train: dict, child_train: dict, measure: dict,
          param_fn: Callable[[methods.Method], dict[str, Any]]) -> list[dict[str, Any]]:
    registry = methods.load_all()
    base = {"name": f"{name}: baseline", "data": data, "model": {"arch": arch},
            "method": {"name": "baseline", "params": {}}, "train": base_train, "measure": measure}
    specs = [base]
    for m in sorted(registry.values(), key=lambda m: (m.family, m.name)):
        if m.name == "baseline" or m.family == "control":  # a control needs its run: with_controls adds it
            continue
        specs.append({"name": f"{name}: {m.name}", "data": copy.deepcopy(data), "model": {"from_run": BASE},
                      "method": {"name": m.name, "params": param_fn(m)}, "train": dict(child_train),
                      "measure": dict(measure)})
    return specs


def quick_tour() -> list[dict[str, Any]]:
    """Fashion-MNIST (small slice), ResNet-18: baseline 2 epochs, every method with 1-epoch fine-tunes.

    Sized to finish in well under 10 minutes on 2 CPU cores.
    """
    data = {"name": "fashion-mnist", "limit": 1000, "test_limit": 500, "val_fraction": 0.05, "image_size": 16}
    measure = {"onnx": True, "latency_runs": 10, "warmup_runs": 2}
    return _plan("Quick tour", data, "resnet18", {"epochs": 2, "device": "cpu"}, {"epochs": 1, "device": "cpu"},
                 measure, _quick_params)


def cifar10_resnet18_gpu(path: str | None = None) -> list[dict[str, Any]]:
    """Full CIFAR-10, ResNet-18 (small-input stem) on CUDA: 30-epoch base, method defaults."""
    path = path or settings.cifar10() or str(SHARED_CIFAR10)
    data = {"name": "cifar10", "path": path, "batch_size": 256}
    measure = {"onnx": True, "latency_runs": 30, "warmup_runs": 5}
    return _plan("CIFAR-10 ResNet-18", data, "resnet18", {"epochs": 30, "device": "cuda"},
                 {"epochs": 5, "device": "cuda"}, measure, _default_params)


PRESETS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "Quick tour (CPU)": quick_tour,
    "CIFAR-10 ResNet-18 (GPU)": cifar10_resnet18_gpu,
}


def sweep(params: dict[str, Any], name: str | None, values: list[Any]) -> list[dict[str, Any]]:
    """One params dict per sweep value (``name`` None or no values: just ``params``)."""
    if not name or not values:
        return [dict(params)]
    return [{**params, name: v} for v in values]


def parse_values(param: methods.Param, text: str, where: str) -> list[Any]:
    """Comma-separated sweep values, each checked against the parameter's schema."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            value: Any = float(part) if param.kind == "float" else int(part) if param.kind == "int" else part
        except ValueError:
            raise SpecError(where, f"{part!r} is not a {param.kind}") from None
        out.append(param.check(where, value))
    return out


def custom_plan(*, data: dict, model: dict, steps: list[tuple[str, list[dict[str, Any]]]], base_train: dict,
                train: dict, measure: dict, chain: bool = False, name: str = "") -> list[dict[str, Any]]:
    """Specs for a hand-made experiment.

    ``model`` is {"arch": ...} (a baseline is trained first and every method starts from it),
    {"from_run": id} or {"checkpoint": path} (the checkpoint is first scored and measured as it is,
    or fine-tuned for ``base_train["epochs"]``, so it has a run of its own that every method is
    compared with). ``steps`` lists (method, params variants); with ``chain`` each step starts from
    the previous step's result (a pipeline of jobs).
    """
    specs: list[dict[str, Any]] = []
    start: dict[str, Any] = dict(model)
    prefix = f"{name}: " if name else ""
    if model.get("arch") or model.get("checkpoint"):
        label = (f"baseline {model['arch']}" if model.get("arch") else
                 f"{Path(model['checkpoint']).stem} " + ("fine-tuned" if base_train.get("epochs") else "as given"))
        specs.append({"name": prefix + label, "data": data, "model": dict(model),
                      "method": {"name": "baseline", "params": {}}, "train": dict(base_train),
                      "measure": dict(measure)})
        start = {"from_run": ref(0)}
    for i, (method, variants) in enumerate(steps):
        # A sweep's jobs are told apart by what varies; a pipeline's steps by their place in it.
        varying = [k for k in variants[0] if any(v.get(k) != variants[0][k] for v in variants)]
        step = f"step {i + 1}/{len(steps)} " if chain and len(steps) > 1 else ""
        for params in variants:
            label = ", ".join(f"{k}={params[k]}" for k in varying)
            specs.append({"name": f"{prefix}{step}{method}" + (f" ({label})" if label else ""),
                          "data": copy.deepcopy(data),
                          "model": dict(start), "method": {"name": method, "params": dict(params)},
                          "train": dict(train), "measure": dict(measure)})
            if chain:
                start = {"from_run": ref(len(specs) - 1)}
    return specs


# Where a plan's spec may name another job of the plan by ref(i): the model it starts from, and the
# run a control is trained for.
REF_FIELDS = (("model", "from_run"), ("method.params", "of_run"))


def _ref_slots(s: dict[str, Any]) -> list[tuple[dict[str, Any], str, int]]:
    """(dict, key, i) of every ref(i) placeholder in spec ``s``."""
    slots = []
    for path, key in REF_FIELDS:
        d: Any = s
        for part in path.split("."):
            d = d.get(part) if isinstance(d, dict) else None
        v = d.get(key) if isinstance(d, dict) else None
        if isinstance(v, str) and v.startswith(REF_PREFIX):
            slots.append((d, key, int(v[len(REF_PREFIX):])))
    return slots


def resolve(specs: list[dict[str, Any]], ids: list[str] | str) -> list[dict[str, Any]]:
    """Copies of ``specs`` with ref(i) placeholders replaced by ``ids[i]`` (a str: the id of every ref)."""
    out = copy.deepcopy(specs)
    for s in out:
        for d, key, k in _ref_slots(s):
            d[key] = ids if isinstance(ids, str) else ids[k]
    return out


def with_controls(plan: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``plan`` with a control job appended for each structured, low-rank, factorisation or distillation
    job: the same start and data, trained from scratch to that job's MACs with its epoch budget
    (method ``control``, ``of_run = ref(i)``). Appended at the end, so every earlier ref(i) still holds."""
    from .methods import control  # imports torch: only where controls are asked for
    out = copy.deepcopy(plan)
    for i, s in enumerate(plan):
        if not control.controllable(s.get("method") or {}):
            continue
        out.append({"name": f"control of {s.get('name') or s['method']['name']}", "data": copy.deepcopy(s["data"]),
                    "model": copy.deepcopy(s["model"]), "method": {"name": "control", "params": {"of_run": ref(i)}},
                    "train": copy.deepcopy(s.get("train", {})), "measure": copy.deepcopy(s.get("measure", {})),
                    **{k: s[k] for k in ("experiment", "group") if k in s}})
    return out


def check(specs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Split a plan into specs that validate and one message per spec that does not.

    A spec whose parent in the plan is dropped is dropped too (its placeholder could not resolve).
    """
    ok_index: dict[int, int] = {}
    ok, problems = [], []
    for i, s in enumerate(specs):
        label = s.get('name') or s['method']['name']
        slots = _ref_slots(s)
        dropped = [key for _, key, k in slots if k not in ok_index]
        if dropped:
            problems.append(f"{label}: skipped because the job " + ("it starts from" if "from_run" in dropped else
                                                                     "it is a control of") + " is invalid")
            continue
        if any(not methods.makes_torch_model(specs[k]["method"]) for _, _, k in slots):
            problems.append(f"{label}: the job it starts from makes an INT8 ONNX Runtime model, which cannot "
                            "be trained or compressed further; put quantize_int8 last")
            continue
        try:
            check_spec(resolve([s], "plan-check")[0])
        except SpecError as e:
            problems.append(f"{label}: {e}")
            continue
        s = copy.deepcopy(s)
        for d, key, k in _ref_slots(s):
            d[key] = ref(ok_index[k])
        ok_index[i] = len(ok)
        ok.append(s)
    return ok, problems


def already_queued(specs: list[dict[str, Any]], active: list[dict[str, Any]]) -> list[str]:
    """Ids of ``active`` jobs (queued or running rows) identical to this plan's own starting jobs (those
    that name no other job of the plan), when every one of them has such a twin: launching the plan
    again would repeat work already under way (e.g. "Launch" clicked twice). [] otherwise."""
    roots = [json.loads(json.dumps(check_spec(s).to_dict())) for s in specs if REF_PREFIX not in repr(s)]
    twins = []
    for root in roots:
        twin = next((r["id"] for r in active if r["spec"] == root and r["id"] not in twins), None)
        if twin is None:
            return []
        twins.append(twin)
    return twins


def launch(specs: list[dict[str, Any]], submit: Callable[[dict], str]) -> list[str]:
    """Submit the specs in order, each ref(i) replaced by the id of job i. Returns the job ids."""
    ids: list[str] = []
    for s in specs:
        ids.append(submit(resolve([s], ids)[0]))
    return ids


def prune_by_sensitivity(run: dict[str, Any], steps: int = 1, finetune_epochs: int = 1,
                         target_macs: float | None = None, max_loss: float | None = None) -> dict[str, Any]:
    """The spec that prunes a finished sensitivity run's model (the unchanged base it analysed) by the
    per-layer ratios the run suggested, with the criterion it ranked channels by; scaled together to
    ``target_macs`` or as far as ``max_loss`` allows before fine-tuning, if either is given."""
    spec = run["spec"]
    criterion = spec["method"].get("params", {}).get("criterion", "l1")
    budget = {k: v for k, v in (("target_macs", target_macs), ("max_loss", max_loss)) if v is not None}
    label = {"target_macs": " to {:g} MACs", "max_loss": " within {:g} loss"}
    name = f"prune_structured by sensitivity {run['id']}" + "".join(label[k].format(v) for k, v in budget.items())
    return {"name": name,
            "data": copy.deepcopy(spec["data"]), "model": {"from_run": run["id"]},
            "method": {"name": "prune_structured", "params": {
                "allocation": "sensitivity", "sensitivity_run": run["id"], "criterion": criterion,
                "steps": steps, "finetune_epochs": finetune_epochs, **budget}},
            "train": copy.deepcopy(spec.get("train", {})), "measure": copy.deepcopy(spec.get("measure", {}))}
