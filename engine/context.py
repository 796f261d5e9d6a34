"""What a method sees while it runs: data, base model, device, training helpers, progress, cancel.

A method is ``fn(model, ctx, params) -> model``. ``model`` is a private copy of the base to
change freely; ``ctx.base`` is the untouched base (eval mode), e.g. the teacher. Anything extra a
method wants in the result record goes in ``ctx.extra``. A method that changes the architecture
family (distillation into a student) calls ``ctx.set_arch``.

What only the runner can do comes in as callables, so that methods never import it:
``ctx.load_run(run_id, field)`` gives a finished run's model and bundle (errors name ``field``), and
``ctx.run_child(spec_dict, run_id=..., echo=...)`` runs a spec as a linked child run of this one
(progress through ``echo``) and returns its result record; ``ctx.start_child(spec_dict, run_id=...,
threads=...)`` starts one beside this process instead (a process, or a Ray task under
``SLIMBENCH_BACKEND=ray``; see ``child_runs``) and returns a handle to poll and kill: its progress,
record and state are read from the store.

A method whose result is no plain PyTorch model (e.g. an INT8 ONNX Runtime model) returns a
``runtimes.Runtime``: it says how the runner predicts with it, saves it and times it.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from . import distributed, recovery_lr, training
from .data import DataBundle
from .spec import JobSpec
from .store import Store


@dataclass
class Context:
    spec: JobSpec
    data: DataBundle
    device: torch.device
    store: Store
    run_id: str
    run_dir: Path
    arch: str
    small_input: bool
    load_run: Callable[[str, str], tuple[nn.Module, dict[str, Any]]]
    run_child: Callable[..., dict[str, Any]]
    start_child: Callable[..., Any] | None = None
    base: nn.Module | None = None                  # the starting model, untouched (None for a fresh arch)
    base_record: dict[str, Any] | None = None      # its result record, when it came from a run/bundle
    progress: Callable[..., None] = lambda **_: None
    cancelled: Callable[[], bool] = lambda: False
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("slimbench.run"))
    extra: dict[str, Any] = field(default_factory=dict)
    train_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    best_val_acc: float | None = None
    best_val_phase: str | None = None
    recalibrated: dict[str, int] = field(default_factory=dict)   # after which cut -> how many times
    recalibration_images: int = 0                                   # images the statistics came from
    recipe: dict[str, Any] | None = None           # how it trained (training.recipe), with each fit's phase
    recovery: recovery_lr.RecoveryLr | None = None  # the rate of the last recovery fine-tune, and why

    # -- training helpers --------------------------------------------------------------------
    def fit(self, model: nn.Module, epochs: int | None = None, lr: float | None = None, phase: str = "train",
            **hooks: Any) -> training.FitResult:
        """Train with the spec's train settings (epochs/lr overridable); hooks as in training.fit.
        With ``train.devices > 1`` on as many processes (DDP), this process being rank 0."""
        cfg = self.spec.train
        epochs = cfg.epochs if epochs is None else epochs
        fit = distributed.fit if cfg.devices > 1 and epochs > 0 else training.fit
        res = fit(model, self.data, cfg, epochs=epochs, lr=lr, device=self.device, progress=self.progress,
                  cancelled=self.cancelled, phase=phase, **hooks)
        self.train_seconds += res.seconds
        if res.recipe:  # shared settings from the first fit; each fit's own epochs and lr as a phase
            shared = {k: v for k, v in res.recipe.items() if k not in ("epochs", "lr")}
            self.recipe = self.recipe or {**shared, "phases": []}
            self.recipe["phases"].append({"phase": phase, "epochs": res.recipe["epochs"], "lr": res.recipe["lr"]})
        self.history += [{**h, "phase": phase} for h in res.history]
        if res.history:  # with the phase it came from: a later cut (no fine-tune after it) changes the model
            self.best_val_acc, self.best_val_phase = res.best_val_acc, phase
        return res

    def finetune(self, model: nn.Module, epochs: int, lr: float | None = None, phase: str = "finetune",
                 policy: str = recovery_lr.DEFAULT_POLICY, **hooks: Any) -> training.FitResult:
        """Recovery training after compression at ``lr`` (a method's ``finetune_lr``), else at the rate
        ``policy`` gives (``recovery_lr``: by default the start's own training rate where its record says
        it, a tenth of the training rate where not); the record says which and why."""
        self.recovery = recovery_lr.resolve(lr, self.base_record, self.spec.train, self.data.batch_size,
                                            training.family_of(model), policy)
        return self.fit(model, epochs=epochs, lr=self.recovery.lr, phase=phase, **hooks)

    def training_lr(self) -> float | None:
        """The peak rate this job's model was trained at: its own training phase's (a base, a control, a
        student), else its start's, carried along so that a chain of compressions rewinds to it."""
        own = recovery_lr.recorded_training_lr({"recipe": self.recipe}) if self.recipe else None
        return own if own is not None else recovery_lr.recorded_training_lr(self.base_record)

    def recalibrate(self, model: nn.Module, after: str) -> int:
        """Re-estimate the batch-norm statistics of a model just cut (``after`` names the cut, for
        the record) on ``train.bn_recalibration_images`` training images; call it after every cut,
        before the model is fine-tuned or scored. Returns the images used (0: off, or no batch norm)."""
        n = training.recalibrate_bn(model, self.data, self.spec.train.bn_recalibration_images, self.device,
                                    self.cancelled)
        self.count_recalibration(after, n)
        return n

    def count_recalibration(self, after: str, images: int) -> None:
        """Record one recalibration made elsewhere (inside a training hook, which may run in a DDP rank)."""
        if images:
            self.recalibrated[after] = self.recalibrated.get(after, 0) + 1
            self.recalibration_images = images

    def notes(self) -> list[str]:
        """What the method did to the model beyond its parameters, for the record's notes."""
        notes = [self.recovery.why] if self.recovery else []
        if not self.recalibrated:
            return notes
        where = ", ".join(k if n == 1 else f"{k} (x{n})" for k, n in self.recalibrated.items())
        return notes + [f"batch-norm statistics re-estimated on {self.recalibration_images} training images "
                        f"(augmented as in training) after every cut, before fine-tuning or scoring: {where}"]

    def evaluate(self, model: nn.Module, split: str = "val", full: bool = False) -> dict[str, Any]:
        model.to(self.device)
        return training.evaluate(model, self.data, split, self.device, full=full, cancelled=self.cancelled)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.data.input_shape

    def set_arch(self, arch: str, small_input: bool | None = None) -> None:
        self.arch = arch
        if small_input is not None:
            self.small_input = small_input

    def base_copy(self) -> nn.Module:
        if self.base is None:
            raise RuntimeError("this method needs a trained base model")
        return copy.deepcopy(self.base)
