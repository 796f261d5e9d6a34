"""Auto-compress's latency objective: "latency at batch b in a chosen runtime on this machine's CPU or GPU".

A trial's model is exported to the chosen runtime (``engine.deploy``: eager PyTorch, ONNX Runtime,
OpenVINO) and timed at batch ``batch`` interleaved with the start exported to the SAME runtime
(``measure.paired_speedup``, the engine's one paired timer: ABBA rounds, median of per-round ratios),
so a runtime's own gain is never credited to compression. ``best`` times the trial in every runtime
here, each against the start in that runtime, and keeps the runtime where the trial itself is
fastest; its speed-up is the one paired there, chained (where that is not the start's fastest runtime) with
the start's own paired speed-up between the two, so it is always against the start at its fastest.

An INT8 trial's ONNX file runs in ONNX Runtime and in OpenVINO whatever format made it
(``int8_formats.runner_in``); under ``best`` it is timed in each of them that runs here, each paired with the
FP32 start in that same runtime (OpenVINO understands QDQ INT8: the same file ran 1.7x faster there than in
ONNX Runtime on ResNet-18, ``python -m bench runtimes``). Under ``onnxruntime`` or ``openvino`` it is timed
there; under ``eager``, where no INT8 runs, in its format's own runtime (``int8_formats.home``).

An exported model that answers differently from the model the search scored is not that model: each FP32
model's top-1 in every runtime is compared with its eager top-1 on ``AGREEMENT_IMAGES`` validation
images, and an INT8 model's in every runtime with its top-1 in its format's own runtime (where its validation
accuracy was measured); a runtime agreeing on fewer than ``AGREEMENT_MIN`` of them is refused for that model,
with the agreement and why recorded (``refused``).

On the GPU (``device`` cuda) the runtimes are deploy's CUDA ones: PyTorch eager on CUDA and ONNX Runtime's CUDA
execution provider with I/O binding (input and output stay on the GPU), ``best`` choosing between them; inputs are
made on the GPU and every call is synchronised (``measure.time_runs``), so no host copy is timed. The agreement
reference stays each model's eager answers on the CPU. INT8 models are not timed there (``search_space.INT8_ON_CUDA``:
the search leaves INT8 out on cuda); the judge refuses one rather than time it on another device.
"""
from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .. import deploy, measure, runtimes
from . import int8_formats

RUNTIMES = ("eager", "onnxruntime", "openvino", "best")
AGREEMENT_IMAGES = 256
# A few hundred images: one or two near-tie flips of an FP32 export must not refuse a runtime; a broken
# export (a wrong layout, a dropped op) disagrees on far more than 3 %.
AGREEMENT_MIN = 0.97


DEVICES = ("cpu", "cuda")


def unavailable(runtime: str, device: str = "cpu") -> str | None:
    """Why ``runtime`` cannot time a model on this machine's ``device`` (deploy's reason), None where it can."""
    if runtime == "best":
        return None if here(device) else f"no runtime runs on this machine's {device}"
    return deploy.DEPLOYMENTS[runtime].available(device)


def here(device: str = "cpu") -> list[str]:
    """The runtimes ``best`` chooses among on this machine's ``device``."""
    return [r for r in RUNTIMES if r != "best" and deploy.DEPLOYMENTS[r].available(device) is None]


def device_name(device: str) -> str:
    """The device latency is taken on, as a record says it: ``cpu (<model>)`` or ``cuda (<GPU name>)``."""
    if device == "cuda":
        return f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cuda"
    return f"cpu ({measure.cpu_model()})"


def int8_engine(fmt: str) -> str:
    """The runtime an INT8 model of format ``fmt`` is made for (where it is scored): its reference answers."""
    return int8_formats.home(fmt)


@torch.no_grad()
def top1_agreement(reference: Callable, predictor: Callable, images: torch.Tensor) -> float:
    """Share of ``images`` whose top-1 from ``predictor`` equals ``reference``'s."""
    return deploy.agreement(reference(images).float(), predictor, images)["agreement"]


class LatencyJudge:
    """Times models at ``batch`` in ``runtime`` against the start exported to the same runtime.
    ``time(model)``: its latency_ms, x faster than the start in that runtime (``speedup``), the runtime, the
    start's latency there, every runtime's paired figures (``timed``) and the runtimes refused (``refused``)."""

    def __init__(self, ctx, runtime: str, batch: int, device: str = "cpu"):
        cfg = ctx.spec.measure
        self.shape, self.batch, self.runtime, self.device = ctx.input_shape, batch, runtime, device
        self.runs, self.warmup, self.threads_cfg = cfg.latency_runs, cfg.warmup_runs, cfg.threads
        self.rounds = cfg.paired_rounds or 5
        self.threads = measure.timing_threads(cfg.threads)
        self.folder = Path(tempfile.mkdtemp(prefix="search-latency-", dir=ctx.run_dir))
        self.names = (here() if device == "cpu" else here(device)) if runtime == "best" else [runtime]
        self.log = ctx.log
        self.images = next(iter(ctx.data.loader("val", "cpu", limit=AGREEMENT_IMAGES,
                                                batch_size=AGREEMENT_IMAGES)))[0]
        start = self.start = ctx.base_copy().to("cpu").eval()
        # Every runtime the start loads in times it; one whose answers differ from eager is not offered to trials.
        self.start_fns, self.start_refused, self.agreement = self._predictors(start, "start", keep_refused=True)
        usable = [n for n in self.start_fns if n not in self.start_refused]
        if not usable:
            raise RuntimeError(f"the start could not run in {runtime}: "
                               + "; ".join(f"{n}: {r['why']}" for n, r in self.start_refused.items()))
        # The start's own fastest runtime (each against eager, paired): reported, and what Compare's "best" means.
        self.start_speed: dict[str, float] = {}
        self.start_runtime = max(usable, key=self._start_speed) if len(usable) > 1 else usable[0]
        self.usable = usable

    def _start_speed(self, name: str) -> float:
        """How much faster the start runs in runtime ``name`` than in eager (paired), measured once."""
        if name not in self.start_speed:
            eager = self.start_fns["eager"] if "eager" in self.start_fns else self._load("eager", self.start, self.folder)
            self.start_speed[name] = 1.0 if name == "eager" else self._paired(eager, self.start_fns[name])["speedup"]
        return self.start_speed[name]

    def label(self, name: str) -> str:
        """A runtime as the record names it: ``onnxruntime`` on the CPU, ``onnxruntime_cuda`` on the GPU (deploy.key)."""
        return deploy.key(name, self.device)

    def _load(self, name: str, model: nn.Module, folder: Path) -> Callable[[torch.Tensor], Any]:
        """``model`` (on the CPU, left there) in runtime ``name`` on the judge's device."""
        if name == "eager":
            if self.device == "cpu":
                return model
            return deploy.DEPLOYMENTS["eager"].load(None, copy.deepcopy(model), self.device, self.threads)
        return deploy.predictor_for(name, model, self.shape, folder, self.threads, device=self.device)

    def _predictors(self, model: nn.Module, tag: str, keep_refused: bool = False) -> tuple[
            dict[str, Callable[[torch.Tensor], Any]], dict[str, dict[str, Any]], dict[str, float]]:
        """``model`` loaded in each runtime of the judge's (the start's usable ones for a trial), those refused
        ({runtime: {"agreement", "why"}}) and each exported runtime's top-1 agreement with eager.
        ``keep_refused``: refused ones stay loaded (the start's: an INT8 trial in that engine is still timed
        against it)."""
        out: dict[str, Callable[[torch.Tensor], Any]] = {}
        refused: dict[str, dict[str, Any]] = {}
        agreed: dict[str, float] = {}
        for name in self.names if tag == "start" else self.usable:
            folder = self.folder / f"{tag}-{name}"
            folder.mkdir(parents=True, exist_ok=True)
            try:
                fn = self._load(name, model, folder)
            except Exception as e:   # a graph this runtime cannot take: the others still judge it
                self.log.warning("autocompress: %s could not run %s: %s", name, tag, str(e).splitlines()[0][:200])
                continue
            if fn is not model:   # an export, or eager on the GPU: against eager on the CPU
                agree = top1_agreement(model, fn, self.images)
                agreed[name] = agree
                if agree < AGREEMENT_MIN:
                    why = (f"{self.label(name)} agreed with eager{' on the CPU' if self.device != 'cpu' else ''} on "
                           f"{agree:.1%} of {len(self.images)} validation images' top-1, "
                           f"under {AGREEMENT_MIN:.0%}: not timed as this model")
                    self.log.warning("autocompress: %s refused for %s: %s", name, tag, why)
                    refused[name] = {"agreement": agree, "why": why}
                    if not keep_refused:
                        continue
            out[name] = fn
        return out, refused, agreed

    def _start_in(self, name: str) -> Callable | None:
        """The start as timed in runtime ``name``: as loaded at the start (a refused runtime too: an INT8 model
        there is still paired with it), else exported now (an INT8 model's own runtime under ``eager``)."""
        if name not in self.start_fns:
            folder = self.folder / f"start-{name}"
            folder.mkdir(parents=True, exist_ok=True)
            try:
                self.start_fns[name] = self._load(name, self.start, folder)
            except Exception as e:   # said; an INT8 model is then timed in its other runtimes only
                self.log.warning("autocompress: %s could not run the start: %s", name, str(e).splitlines()[0][:200])
                return None
        return self.start_fns[name]

    def int8_runtimes(self, fmt: str) -> list[str]:
        """Where an INT8 model of format ``fmt`` is timed: under ``best`` every INT8 runtime here; under a chosen
        runtime that runs INT8, that one; under ``eager`` (no INT8 there) the format's own runtime."""
        if self.runtime == "best":
            return [r for r in int8_formats.INT8_RUNTIMES if r in self.names]
        return [self.runtime] if self.runtime in int8_formats.INT8_RUNTIMES else [int8_formats.home(fmt)]

    def _int8_predictors(self, model: Any) -> tuple[dict[str, tuple[str, Callable]], dict[str, dict[str, Any]],
                                                    dict[str, float]]:
        """An INT8 model in each runtime it is timed in ({"int8 <runtime>": (runtime of the start it is paired
        with, predictor)}), those refused and each non-home runtime's top-1 agreement with its home runtime's
        answers (what its validation accuracy was measured on)."""
        fmt = getattr(model, "fmt", "qdq")
        home = int8_formats.home(fmt)
        raw = getattr(model, "onnx_bytes", None)
        pairs: dict[str, tuple[str, Callable]] = {}
        refused: dict[str, dict[str, Any]] = {}
        agreed: dict[str, float] = {}
        for rt in self.int8_runtimes(fmt):
            name = f"int8 {rt}"
            if self._start_in(rt) is None:
                continue
            if rt == home:
                fn = runtimes.of(model, torch.device("cpu")).timing("cpu")
            else:
                if raw is None:   # no ONNX file to load elsewhere: its own runtime only
                    continue
                try:
                    fn = int8_formats.runner_in(rt, raw, self.threads)
                except Exception as e:   # a file this runtime cannot take: its own runtime still times it
                    self.log.warning("autocompress: %s could not run this INT8 model: %s", rt,
                                     str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
                    continue
                agree = top1_agreement(model, fn, self.images)
                agreed[name] = agree
                if agree < AGREEMENT_MIN:
                    why = (f"the INT8 model in {rt} agreed with its own runtime ({home}) on {agree:.1%} of "
                           f"{len(self.images)} validation images' top-1, under {AGREEMENT_MIN:.0%}: not timed as "
                           "this model")
                    self.log.warning("autocompress: %s refused: %s", name, why)
                    refused[name] = {"agreement": agree, "why": why}
                    continue
            pairs[name] = (rt, fn)
        return pairs, refused, agreed

    def _paired(self, ref: Callable, cand: Callable) -> dict[str, Any]:
        return measure.paired_speedup(ref, cand, self.shape, torch.device(self.device), self.runs, self.warmup,
                                      self.threads_cfg, rounds=self.rounds, batch=self.batch)

    def time(self, model: Any, tag: str = "trial") -> dict[str, Any]:
        """``model`` timed in each runtime it may run in, each against the start in that runtime; judged in the
        runtime where it is fastest, with the speed-up paired there."""
        refused: dict[str, dict[str, Any]] = {}
        agreed: dict[str, float] = {}
        if isinstance(model, nn.Module):
            fns, refused, agreed = self._predictors(model.to("cpu").eval(), tag)
            pairs = {n: (n, fn) for n, fn in fns.items()}
        elif self.device != "cpu":   # never timed on another device than the trials it is compared with
            raise RuntimeError(f"an INT8 model is not timed on {self.device}: "
                               "INT8 is left out of a latency search there")
        else:   # INT8: in each INT8 runtime it is timed in, paired with the FP32 start in that same runtime
            pairs, refused, agreed = self._int8_predictors(model)
        if not pairs:
            tried = (self.usable if isinstance(model, nn.Module)
                     else self.int8_runtimes(getattr(model, "fmt", "qdq")))
            raise RuntimeError(f"no runtime of {', '.join(tried)} could run this model faithfully"
                               + (": " + "; ".join(f"{n}: {r['why']}" for n, r in refused.items()) if refused
                                  else " (nor the start there)"))
        try:
            timed = {n: {**self._paired(self.start_fns[start_rt], fn), "start_runtime": start_rt}
                     for n, (start_rt, fn) in pairs.items()}
        finally:
            for n in self.names:
                shutil.rmtree(self.folder / f"{tag}-{n}", ignore_errors=True)
        name = min(timed, key=lambda n: timed[n]["latency_ms"])   # the model's fastest runtime
        p = timed[name]
        # Under ``best`` the speed-up that counts is against the start in ITS fastest runtime: a trial fastest in
        # a runtime where the start is slow must not be credited with that runtime's slowness. The paired ratio
        # there is chained with the start's own paired ratio between the two runtimes (both via eager).
        speedup = p["speedup"]
        if self.runtime == "best" and p["start_runtime"] != self.start_runtime:
            speedup *= self._start_speed(p["start_runtime"]) / self._start_speed(self.start_runtime)
        lab = self.label
        return {"latency_ms": p["latency_ms"], "speedup": speedup, "speedup_same_runtime": p["speedup"],
                "runtime": lab(name), "vs_start_runtime": lab(self.start_runtime),
                "start_runtime": lab(p["start_runtime"]), "start_latency_ms": p["ref_latency_ms"],
                "device": self.device,
                "timed": {lab(n): {"speedup": t["speedup"], "latency_ms": t["latency_ms"],
                                   "start_latency_ms": t["ref_latency_ms"], "start_runtime": lab(t["start_runtime"])}
                          for n, t in timed.items()},
                "agreement": {lab(n): a for n, a in agreed.items()},
                "refused": {lab(n): r for n, r in refused.items()}}

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
