"""A spec checked against the registries: the dataset, the architecture, the method and its parameters.

``engine.spec`` checks structure alone (and imports no torch); :func:`check_spec` is the one way
every entry point (runner, queue, CLI, presets, pages, bench) turns a dict into a fully checked
``JobSpec``, with the method's parameters completed by their defaults.
"""
from __future__ import annotations

from typing import Any

from . import data, methods, models, settings
from .devices import devices_problem
from .errors import SpecError
from .spec import JobSpec, short_repr


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
        problem = devices_problem(spec.train.device, spec.train.devices)
        if problem:
            raise SpecError("train.devices", problem)
    # Method name and parameters: the registry owns their schema.
    spec.method.params = methods.validate(spec.method.name, spec.method.params, spec=spec)
    if methods.get(spec.method.name).needs_base and m.arch:
        raise SpecError("model", f"method {spec.method.name} compresses a trained model: set model.from_run or "
                        "model.checkpoint (train one first with method baseline)")
    return spec

