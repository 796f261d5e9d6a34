"""Recovery fine-tuning after a cut: its own schedule, optionally distillation-assisted.

Every fine-tune is ``ctx.finetune``: SGD (or the spec's optimiser) at ``finetune_lr`` (default:
``engine.recovery_lr``'s policy, the start's own training rate where its record says it), a linear
warm-up of ``train.warmup_epochs``, then cosine decay to 0 over its ``finetune_epochs``. With ``finetune_kd`` > 0 the loss is Hinton et al.'s (2015) knowledge
distillation with the *uncompressed start* as teacher: the model before any cut, which is what the
pruned net should imitate (the recipe of e.g. DepGraph's and ResRep's fine-tunes with KD, and of
Tian et al. 2020's benchmark, T = 4).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .. import recovery_lr, training
from . import Param
from .distill import kd_loss, load_teacher

# Off by default: on a Fashion-MNIST ResNet-20 cut to 3.96x fewer MACs with 2 fine-tune epochs it gained
# +0.3 pt (alpha 0.9) and +0.5 pt (alpha 0.5), within test-set noise, for a teacher forward pass per step
# (`python -m bench.struct_recipes`, numbers in its docstring). From the Quick tour's base (0.8857), cut
# 2.11x with 3 fine-tune epochs at lr 0.01, it cost 0.52 pt against the same fine-tune without it (0.8774 vs
# 0.8826 on all 10,000 test images).
KD_DEFAULT = 0.0
# What a blank finetune_lr means, for every method's help.
RECOVERY_LR_DEFAULT = (
    "the starting model's own training rate (learning-rate rewinding, Renda et al. 2020) where its record "
    "says it, else a tenth of the training rate" if recovery_lr.DEFAULT_POLICY == recovery_lr.REWIND
    else "a tenth of the training rate") + "; " + recovery_lr.DEFAULT_EVIDENCE


def params(epochs: int = 1, kd: float = KD_DEFAULT) -> tuple[Param, ...]:
    """The fine-tune parameters a method that cuts exposes (``epochs``: its default recovery epochs)."""
    return (
        Param("finetune_epochs", "int", epochs, "recovery epochs after each cut (linear warm-up of "
              "train.warmup_epochs, then cosine decay to 0)", low=0, high=1000),
        Param("finetune_lr", "float", None, "learning rate of the recovery fine-tune (blank: " + RECOVERY_LR_DEFAULT
              + ")", low=0, high=10, low_open=True, optional=True),
        Param("finetune_kd", "float", kd, "distillation-assisted fine-tune: weight of Hinton et al.'s KD term "
              "with the uncompressed start as teacher (0: labels only; 0.9 as in Tian et al. 2020's benchmark)",
              low=0, high=1),
        Param("finetune_T", "float", 4.0, "softmax temperature of the distillation-assisted fine-tune",
              low=0, high=100, low_open=True),
    )


class Recovery:
    """Fine-tunes a model after each cut with the job's fine-tune settings; the teacher (the start,
    ``ctx.base``, frozen) is loaded once, before the first cut, and kept for every round."""

    def __init__(self, ctx, params: dict[str, Any]):
        self.ctx, self.p = ctx, params
        self.teacher: nn.Module | None = None
        if params["finetune_kd"] > 0 and params["finetune_epochs"] > 0:
            self.teacher = load_teacher(ctx, None)
            ctx.extra.update({"finetune_kd": params["finetune_kd"], "finetune_T": params["finetune_T"],
                              "finetune_teacher": ctx.spec.model.from_run or "the starting model"})

    def loss_fn(self):
        if self.teacher is None:
            return None
        teacher, T, alpha = self.teacher, self.p["finetune_T"], self.p["finetune_kd"]
        smoothing = training.resolved(self.ctx.spec.train, training.family_of(teacher)).label_smoothing  # its own kind

        def loss(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                t = teacher(x).float()
            return kd_loss(logits.float(), t, y, T, alpha, smoothing)
        return loss

    def __call__(self, model: nn.Module, phase: str = "finetune", epochs: int | None = None, **hooks: Any):
        epochs = self.p["finetune_epochs"] if epochs is None else epochs
        if not epochs:
            return None
        kd = self.loss_fn()
        if kd is not None:
            hooks["loss_fn"] = kd
        return self.ctx.finetune(model, epochs, lr=self.p["finetune_lr"], phase=phase, **hooks)
