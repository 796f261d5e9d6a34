"""What a method sees while it runs: data, base model, device, training helpers, progress, cancel.

A method is ``fn(model, ctx, params) -> model``. ``model`` is a private copy of the base to
change freely; ``ctx.base`` is the untouched base (eval mode), e.g. the teacher. Anything extra a
method wants in the result record goes in ``ctx.extra``. A method that changes the architecture
family (distillation into a student) calls ``ctx.set_arch``.

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

from . import training
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

    # -- training helpers --------------------------------------------------------------------
    def fit(self, model: nn.Module, epochs: int | None = None, lr: float | None = None, phase: str = "train",
            **hooks: Any) -> training.FitResult:
        """Train with the spec's train settings (epochs/lr overridable); hooks as in training.fit."""
        res = training.fit(model, self.data, self.spec.train, epochs=epochs, lr=lr, device=self.device,
                           progress=self.progress, cancelled=self.cancelled, phase=phase, **hooks)
        self.train_seconds += res.seconds
        self.history += [{**h, "phase": phase} for h in res.history]
        if res.history:  # with the phase it came from: a later cut (no fine-tune after it) changes the model
            self.best_val_acc, self.best_val_phase = res.best_val_acc, phase
        return res

    def finetune(self, model: nn.Module, epochs: int, lr: float | None = None, phase: str = "finetune",
                 **hooks: Any) -> training.FitResult:
        """Recovery training after compression: a tenth of the training learning rate by default."""
        if lr is None:
            lr = training.default_lr(self.spec.train, self.data.batch_size) / 10
        return self.fit(model, epochs=epochs, lr=lr, phase=phase, **hooks)

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

    def load_run(self, run_id: str, field: str) -> tuple[nn.Module, dict[str, Any]]:
        """A finished run's model (e.g. another teacher) and its bundle; errors name ``field``."""
        from .runner import load_run_model
        return load_run_model(self.store, run_id, field)

    def base_copy(self) -> nn.Module:
        if self.base is None:
            raise RuntimeError("this method needs a trained base model")
        return copy.deepcopy(self.base)
