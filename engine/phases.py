"""What a job is doing, in words, and how far it is, from its state and its latest progress event.

The runner and the methods record raw phase names in their events ("data", "train", "finetune 2/3",
"calibrate", "measure:paired", "runtime:onnxruntime_cpu", a pipeline's "step 1/2 prune_structured:
train", ...). Here they become what a user reads on Jobs and in `engine jobs`: queued, loading data,
training epoch k/n, fine-tuning, calibrating, measuring, exporting, done. Torch-free, so the CLI's
job commands stay fast.
"""
from __future__ import annotations

import re
from typing import Any

# Raw phase (or its prefix before ":") -> words. Training phases not named here read as their own name.
WORDS = {
    "queued": "queued", "scheduled": "scheduled", "data": "loading data", "method": "starting the method",
    "train": "training", "finetune": "fine-tuning", "soft_prune": "soft-pruning", "sparsify": "sparsity training",
    "expand": "training", "distill": "distilling", "lowrank-regularised": "low-rank regularised training",
    "calibrate": "calibrating", "sensitivity": "sensitivity probe", "accuracy budget search": "accuracy budget search",
    "evaluate": "evaluating on the test set", "export": "exporting", "measure": "measuring", "runtime": "measuring",
}
# Sub-phases worth naming after the words.
DETAIL = {"evaluate:start": "evaluating the starting model", "evaluate:control": "evaluating the control",
          "measure:paired": "measuring (paired speed-up)", "sensitivity:ranking": "ranking channels for the probes"}
PIPELINE_STEP = re.compile(r"^(step \d+/\d+ [^:]+): (.*)$")
STEP_OF = re.compile(r"^(\w[\w -]*?) (\d+/\d+)$")   # "finetune 2/3": the 2nd of 3 prune-and-fine-tune rounds


def label(state: str | None, ev: dict[str, Any] | None, waiting: str | None = None) -> str:
    """What job in ``state`` is doing, from its latest event ``ev``: "training epoch 3/8", "measuring",
    "sensitivity probe 5/16 (layer4.0.conv1)", "done"; a queued job's ``waiting`` text wins over "queued"."""
    ev = ev or {}
    if state == "queued":
        return waiting or "queued"
    if state != "running":
        return state or ""
    return phase_words(str(ev.get("phase") or ""), ev)


def phase_words(phase: str, ev: dict[str, Any]) -> str:
    step = PIPELINE_STEP.match(phase)
    if step:  # a pipeline's step: "step 1/2 prune_structured: fine-tuning 1/3 epoch 1/1"
        return f"{step.group(1)}: {phase_words(step.group(2), ev)}"
    if phase in DETAIL:
        return DETAIL[phase]
    validated = phase.endswith(":val")
    base = phase.removesuffix(":val")
    head = base.split(":")[0]
    rounds = STEP_OF.match(head)
    name, round_ = (rounds.group(1), rounds.group(2)) if rounds else (head, "")
    words = WORDS.get(name, name.replace("_", " "))
    if head == "runtime" and ":" in base:
        words = f"measuring {base.split(':', 1)[1].replace('_', ' ')}"
    parts = [words + (f" {round_}" if round_ else "")]
    if ev.get("epoch") and ev.get("epochs"):
        parts.append(f"epoch {ev['epoch']}/{ev['epochs']}" + (" validated" if validated else ""))
    elif ev.get("steps") and ev.get("step") is not None:
        parts.append(f"{ev['step']}/{ev['steps']}")
        if ev.get("layer"):
            parts.append(f"({ev['layer']})")
    return " ".join(parts)


def fraction(state: str | None, ev: dict[str, Any] | None) -> float | None:
    """How far a job is, 0-1: done 1, queued 0; a running job by the epochs (and steps) of its current
    training phase or the steps of a counted phase (sensitivity probes, a search); None in a phase with
    no count (loading data, evaluating, measuring: its label says which)."""
    ev = ev or {}
    if state == "done":
        return 1.0
    if state == "queued":
        return 0.0
    if state != "running":
        return None
    if ev.get("epochs") and ev.get("epoch"):
        within = (ev["step"] / ev["steps"]) if ev.get("steps") and ev.get("step") is not None else 1.0
        return min(1.0, ((ev["epoch"] - 1) + within) / ev["epochs"])
    if ev.get("steps") and ev.get("step") is not None:
        return min(1.0, ev["step"] / ev["steps"])
    return None
