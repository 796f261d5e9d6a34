"""The learning rate of a recovery fine-tune after a cut, when the job does not set one (``finetune_lr``).

Two policies:

- ``rewind``: the start's own training rate (learning-rate rewinding, Renda et al. 2020, ICLR; Le & Hua
  2021): the pruned net is retrained at the peak rate its weights were trained at, decayed on the
  fine-tune's own cosine schedule. Known where the start's record says it (``training_lr``, or the
  ``train`` phase of its recipe); a start without one (an imported model or a bundle) falls back to
  ``tenth``.
- ``tenth``: a tenth of the spec's training rate (``train.lr``, else the linear scaling rule), the
  classic "fine-tune at a small rate".

``DEFAULT_POLICY`` says which applies. Every cutting method passes ``finetune_lr`` through here (via
``Context.finetune``), and the record says which rate it used and why (``recovery_lr``,
``recovery_lr_source``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import training
from .spec import TrainSpec

REWIND, TENTH = "rewind", "tenth"
POLICIES = (REWIND, TENTH)
# Rewinding, decided on evidence: `python -m bench rewind-ab --workspace W --base 20261201-051131-85114f` (the
# Quick tour's base, CIFAR ResNet-20 on Fashion-MNIST 16 px, top-1 0.8857, trained at lr 0.025); each pair equal
# but for the rate, Δ vs base on all 10,000 test images, rewound / tenth, and rewound − tenth paired:
#   unstructured 90 % gradual, 3 epochs:         -2.08 / -6.60 pt, +4.52 (95 % CI +3.91 to +5.13)
#   soft filter pruning 30 %, 3 + 1 epochs:      -0.44 / -1.53 pt, +1.09 (+0.64 to +1.54)
#   structured keep 35 % MACs, 1 epoch -> INT8:  -2.55 / -3.43 pt, +0.88 (+0.41 to +1.35)
# and, the stop before (bench recipes-cpu), structured 2.11x, 3 epochs: +0.08 / -1.40 pt.
DEFAULT_POLICY = REWIND
# The figures DEFAULT_POLICY rests on, quoted in every finetune_lr help.
DEFAULT_EVIDENCE = ("from the Quick tour's base, Δ vs base rewound / at a tenth, all 10,000 test images: unstructured "
                    "90 % gradual -2.08 / -6.60 pt, soft filter pruning 30 % -0.44 / -1.53, structured keeping 35 % "
                    "of MACs with 1 epoch then INT8 -2.55 / -3.43, structured 2.11x +0.08 / -1.40 "
                    "(python -m bench rewind-ab)")
# The recipe phases that trained a model's weights from their start (a base, a control, a student).
TRAINING_PHASES = ("train", "distill")


def recorded_training_lr(record: dict[str, Any] | None) -> float | None:
    """The peak rate a finished run's weights were trained at, from its result record: its own
    ``training_lr`` (carried along a chain of compressions), else its recipe's training phase; None
    if the record does not say (no record, or one from before these fields)."""
    if not record:
        return None
    if record.get("training_lr"):
        return float(record["training_lr"])
    for phase in (record.get("recipe") or {}).get("phases") or []:
        if phase.get("phase") in TRAINING_PHASES and phase.get("lr"):
            return float(phase["lr"])
    return None


@dataclass(frozen=True)
class RecoveryLr:
    lr: float
    source: str      # "finetune_lr" (set by the job), "rewind" or "tenth"
    why: str         # one line for the run's notes


def resolve(explicit: float | None, start_record: dict[str, Any] | None, train: TrainSpec, batch_size: int,
            family: str | None, policy: str = DEFAULT_POLICY) -> RecoveryLr:
    """The recovery rate: ``explicit`` (the job's ``finetune_lr``) when set; else by ``policy``."""
    if explicit is not None:
        return RecoveryLr(float(explicit), "finetune_lr", f"recovery fine-tune at lr {explicit:g}, set by finetune_lr")
    if policy not in POLICIES:
        raise ValueError(f"unknown recovery-rate policy {policy!r} (one of {', '.join(POLICIES)})")
    tenth = training.default_lr(train, batch_size, family) / 10
    if policy == TENTH:
        return RecoveryLr(tenth, TENTH, f"recovery fine-tune at lr {tenth:g}, a tenth of the training rate")
    start = recorded_training_lr(start_record)
    if start is None:
        return RecoveryLr(tenth, TENTH, f"recovery fine-tune at lr {tenth:g}, a tenth of the training rate: the "
                                        "starting model's record names no training rate to rewind to")
    return RecoveryLr(start, REWIND, f"recovery fine-tune at lr {start:g}, the starting model's own training rate "
                                     "(learning-rate rewinding, Renda et al. 2020)")
