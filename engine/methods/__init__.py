"""The method registry: one place that knows every compression method, its parameters and help.

A method is ``fn(model, ctx, params) -> model``. ``ctx`` (engine.context.Context) gives the data,
the base model, the device, ``ctx.fit`` / ``ctx.evaluate``, progress and cancellation.
Each method module registers itself with ``@register``; the dashboard builds its widgets from
the same ``Param`` list that validates specs here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import SpecError
from ..spec import finite_float, short_key, short_repr
from ..store import check_run_id


@dataclass(frozen=True)
class Param:
    name: str
    kind: str                      # float | int | str | bool | list | run (the id of a finished run)
    default: Any
    help: str = ""
    low: float | None = None       # numeric range
    high: float | None = None
    low_open: bool = False         # True: value must be > low (else >= low)
    high_open: bool = False        # True: value must be < high
    choices: tuple[str, ...] = ()  # for kind == "str"
    optional: bool = False         # None allowed
    run_method: str = ""           # for kind == "run": the method whose runs qualify ("" = any)

    def check(self, where: str, value: Any) -> Any:
        if value is None:
            if self.optional:
                return None
            raise SpecError(where, "must not be null")
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise SpecError(where, f"must be true or false, got {short_repr(value)}")
            return value
        if self.kind in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SpecError(where, f"must be a number, got {type(value).__name__} {short_repr(value)}")
            number = finite_float(where, value)  # NaN and Infinity (which JSON lets through) never pass
            if self.kind == "int":
                if number != int(number):
                    raise SpecError(where, f"must be a whole number, got {short_repr(value)}")
                value = int(value)
            else:
                value = number
            lo_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
            hi_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
            if not (lo_ok and hi_ok):
                raise SpecError(where, f"must be in {self.range_text()}, got {value}")
            return value
        if self.kind == "str":
            if not isinstance(value, str):
                raise SpecError(where, f"must be a string, got {type(value).__name__}")
            if self.choices and value not in self.choices:
                raise SpecError(where, f"unknown value {short_repr(value)}; valid: {', '.join(self.choices)}")
            return value
        if self.kind == "run":
            try:
                return check_run_id(value)
            except ValueError:
                raise SpecError(where, f"not a run id: {short_repr(value)}") from None
        if self.kind == "list":
            if not isinstance(value, list):
                raise SpecError(where, f"must be a list, got {type(value).__name__}")
            return value
        raise AssertionError(f"unknown param kind {self.kind}")

    def range_text(self) -> str:
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return f"{'(' if self.low_open else '['}{lo}, {hi}{')' if self.high_open else ']'}"


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[..., Any]
    params: tuple[Param, ...] = ()
    help: str = ""
    family: str = "other"
    needs_base: bool = True        # needs a trained model to start from (from_run/checkpoint, or trains one)
    check: Callable[[dict, Any], None] | None = None  # cross-field validation (params, spec)
    torch_output: bool = True      # False: the result is no PyTorch model (INT8 ONNX Runtime), so
                                   # no later job can start from it or learn from it as a teacher


METHODS: dict[str, Method] = {}

# A rewrite that would save less than this share of the model's MACs changes (almost) nothing: the
# job is refused before it trains rather than finishing "done" with the model it started from. 5 %:
# what a structured MAC target tolerates, and above a stem-only rewrite of MobileNetV2 (3 %).
MIN_MAC_SAVING = 0.05

# Modules that register methods; imported lazily so that `import engine` stays light.
_MODULES = ("baseline", "pruning", "lowrank", "distill", "factorize", "quantize", "qat", "runtime", "pipeline", "control",
            "autocompress")


def register(name: str, *, params: tuple[Param, ...] | list[Param] = (), help: str = "",
             family: str = "other", needs_base: bool = True,
             check: Callable[[dict, Any], None] | None = None, torch_output: bool = True):
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in METHODS and METHODS[name].fn is not fn:
            raise RuntimeError(f"method {name!r} registered twice")
        METHODS[name] = Method(name, fn, tuple(params), help, family, needs_base, check, torch_output)
        return fn
    return deco


def load_all() -> dict[str, Method]:
    for mod in _MODULES:
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{mod}":
                raise
    return METHODS


def get(name: str) -> Method:
    load_all()
    if name not in METHODS:
        raise SpecError("method.name", f"unknown method {short_repr(name)}; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def run_refs(method: dict[str, Any], where: str = "method") -> list[tuple[str, str]]:
    """(field, run id) of every finished run a spec's ``method`` names in its parameters (a
    teacher, a sensitivity analysis), pipeline steps included."""
    load_all()
    m, params = METHODS.get(method.get("name")), method.get("params") or {}
    if m is None:
        return []
    refs = [(f"{where}.params.{p.name}", params[p.name]) for p in m.params
            if p.kind == "run" and isinstance(params.get(p.name), str)]
    for i, step in enumerate(params.get("steps") or [] if m.name == "pipeline" else []):
        if isinstance(step, dict):
            refs += run_refs(step, f"{where}.params.steps[{i}]")
    return refs


def makes_torch_model(method: dict[str, Any]) -> bool:
    """Whether a spec's ``method`` ({"name", "params"}) ends in a PyTorch model a later job can
    start from (a pipeline ends in its last step's model)."""
    load_all()
    name = method.get("name")
    if name == "pipeline":
        steps = (method.get("params") or {}).get("steps") or []
        name = steps[-1].get("name") if steps and isinstance(steps[-1], dict) else None
    return name not in METHODS or METHODS[name].torch_output


def validate(name: str, params: Any, spec: Any = None, where: str = "method") -> dict[str, Any]:
    """Check params against the method's schema; return them with defaults filled in."""
    if not isinstance(name, str):
        raise SpecError(f"{where}.name", f"must be a string, got {type(name).__name__}")
    m = get(name) if where == "method" else _get_at(name, where)
    if not isinstance(params, dict):
        raise SpecError(f"{where}.params", f"must be an object, got {type(params).__name__}")
    known = {p.name: p for p in m.params}
    unknown = sorted(set(params) - set(known))
    if unknown:
        valid = ", ".join(known) or "(none)"
        raise SpecError(f"{where}.params.{short_key(unknown[0])}", f"unknown parameter for {name}; valid: {valid}")
    out = {p.name: p.check(f"{where}.params.{p.name}", params.get(p.name, p.default)) for p in m.params}
    if m.check is not None:
        m.check(out, spec)
    return out


def _get_at(name: str, where: str) -> Method:
    load_all()
    if name not in METHODS:
        raise SpecError(f"{where}.name", f"unknown method {short_repr(name)}; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name]
