"""What auto-compress searches over: a few method recipes whose knobs come from the registry.

Each candidate is one method or pipeline (prune_structured -> quantize_int8, prune_blocks -> quantize_int8,
lowrank_svd -> quantize_int8, quantize_int8 alone, prune_unstructured, distill into a student), or one of the first
three without its INT8 step (``prune``, ``blocks``, ``lowrank``: FP32, for a device where INT8 runs no faster). A knob's search range is the
registry ``Param``'s own range, narrowed to the part worth trying (keeping half the MACs is worth a
trial, keeping 0.1 % is not) and never wider than the registry allows, so every recipe a trial draws
passes the method's own validation.

A candidate may also say, before anything trains, what share of the start's MACs or size its model
will have (``proxy``): the search refuses a trial that cannot meet a MACs or size target without
training it. Where that share is only known after the cut (low-rank ranks follow the singular values;
a structured cut's parameter count depends on which channels go) the proxy says nothing and the trial
trains.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import measure, models
from . import Param, get

# The searched space by default (a CPU search): INT8 runs 2-3x faster on the CPU, so every cut ends in it.
DEFAULT_SPACE = ("prune_int8", "blocks_int8", "lowrank_int8", "quantize_int8", "unstructured", "distill")
# The same cuts without INT8 (FP32 models): what a latency search on a GPU times (see ``for_device``).
FP32_OF = {"prune_int8": "prune", "blocks_int8": "blocks", "lowrank_int8": "lowrank"}
CANDIDATES = (*DEFAULT_SPACE, *FP32_OF.values())
TUNED = ("prune_int8", "blocks_int8", "lowrank_int8", "unstructured", "distill",
         *FP32_OF.values())   # candidates with a fine-tune to lengthen
DEVICES = ("cpu", "cuda")
# Why INT8 leaves a latency search on a GPU: ONNX Runtime's CUDA execution provider has no INT8 convolution
# kernels for a QDQ model (its Q/DQ pairs run as FP32 arithmetic around FP32 convolutions, slower than the FP32
# model), and no runtime here runs INT8 on the GPU (TensorRT is not one of deploy's runtimes). An INT8 file timed
# on the CPU would be a CPU figure: never compared with the others' GPU figures.
INT8_ON_CUDA = ("INT8 is left out of a latency search on cuda: ONNX Runtime's CUDA execution provider has no INT8 "
                "kernels for QDQ convolutions (it would run them slower than FP32) and no runtime here runs INT8 "
                "on the GPU; an INT8 model timed on the CPU instead would not be comparable")


def for_device(space: list[str] | tuple[str, ...], device: str) -> tuple[list[str], dict[str, str]]:
    """The candidates a latency search on ``device`` draws from ``space``, and what was left out or replaced, with
    why ({candidate: why}). On ``cuda`` an INT8 candidate becomes its FP32 counterpart (``prune_int8`` ->
    ``prune``) and INT8 alone is left out (``INT8_ON_CUDA``); on the CPU the space is as given."""
    if device == "cpu":
        return list(space), {}
    out: list[str] = []
    changed: dict[str, str] = {}
    for c in space:
        fp32 = FP32_OF.get(c)
        if fp32 is not None:
            changed[c] = f"searched as {fp32} (the same cut, no INT8 step): {INT8_ON_CUDA}"
        elif c == "quantize_int8":
            changed[c] = f"left out: {INT8_ON_CUDA}"
            continue
        c = fp32 or c
        if c not in out:
            out.append(c)
    return out, changed
# The full recipe's distillation-assisted fine-tune (recovery.py: Hinton KD with the start as teacher), where the
# method has one: the weight of Tian et al. 2020's benchmark.
FULL_KD = 0.9
STUDENTS = ("mobilenet_v3_small", "mobilenet_v2")   # students that are much smaller than the usual bases


# Channel alignment a structured trial may ask for (``prune_structured``'s ``round_to``; 1: none). Measured on the
# Quick tour's ResNet-20 at 16 px (2-core AMD EPYC, loaded; one interleaved run, batch 1, ONNX Runtime, 1 thread):
# at 0.395 of the MACs, widths in multiples of 8 ran 1.29x the base against 1.17x for the same cut unaligned, and
# the unaligned 1/2.1 and 0.35 cuts ran no faster than the base (0.91x, 0.93x) while their INT8 files ran 1.12x and 1.06x.
ALIGN = (1, 8)


@dataclass(frozen=True)
class Seed:
    params: dict[str, Any]   # the trial's draw as Optuna enqueues it: {"candidate", knob: value}
    why: str                 # the measurement that makes it worth running first
    objectives: tuple[str, ...] = ("size", "macs", "latency", "energy")   # the searches it is seeded into
    epochs: int | None = None   # its fine-tune epochs where the measured recipe needs more than full_epochs


SEEDS = (
    # bench recipes-cpu (docs/BENCHMARKS.md, cpu/recipes), the Quick tour's base: structured L1 to ~2.1x fewer MACs,
    # 3 epochs at the training LR (rewinding, the default), then INT8: 6.12x smaller at +0.08 pt (all 10,000 test
    # images).
    Seed({"candidate": "prune_int8", "prune.target_macs": 1 / 2.1, "prune.round_to": 1},
         "structured to 1/2.1 of the MACs, full fine-tune at the rewound LR -> INT8 measured 6.12x smaller at "
         "+0.08 pt on the Quick tour's base (bench recipes-cpu)"),
    # The deeper cut, same recipe, on a retrained Quick tour base (top-1 0.8887; BENCHMARKS.md Investigations,
    # 2026-12-02): 2.88x fewer MACs, 3 epochs -> INT8: 7.36x smaller at -0.47 pt test (-0.98 pt on validation
    # before INT8: at the 1 pt limit, so the search's own validation figure decides). Its 1-epoch proxy read
    # -2.82 pt, the same as the 1/2.1 cut's (-2.78): a 1-epoch proxy does not tell the two apart.
    Seed({"candidate": "prune_int8", "prune.target_macs": 0.35, "prune.round_to": 1},
         "structured to 35 % of the MACs, full fine-tune at the rewound LR -> INT8 measured 7.36x smaller at "
         "-0.47 pt on a Quick tour base"),
    # For speed: the same recipe with widths in multiples of 8 (ALIGN's measurement). 0.395 is the share nearest the
    # two cuts above that uniform pruning of a 16/32/64-channel ResNet reaches with round_to 8 (1/2.1 is not: 16
    # channels keep 8 or 16). Its accuracy lies between theirs by the MACs it keeps; the search measures it.
    Seed({"candidate": "prune_int8", "prune.target_macs": 0.395, "prune.round_to": 8},
         "structured to 39.5 % of the MACs with widths in multiples of 8, full fine-tune at the rewound LR -> INT8: "
         "aligned widths measured 1.29x the start's speed against 1.17x unaligned at the same MACs (ONNX Runtime, "
         "batch 1, Quick tour net)", objectives=("latency",)),
    # Fewer layers: greedy block pruning of the Quick tour's ResNet-20 to a ResNet-8 (6 of its 7 identity blocks, 0.31
    # of the MACs), 8 fine-tune epochs at the rewound LR, then INT8: -0.27 pt on all 10,000 test images (95 % CI -0.73
    # to +0.19), 10.6x smaller, 2.81x faster than the base's fastest runtime at batch 1 (one interleaved run, loaded:
    # indicative; BENCHMARKS Investigations, 2026-12-02 block pruning). With 3 epochs the cut lost 1.6-2.3 pt, hence its
    # own epochs. An 8-layer ResNet was the only shape measured >= 2x faster at batch 1 on that net.
    Seed({"candidate": "blocks_int8", "blocks.target_macs": 0.31},
         "whole residual blocks removed to ~31 % of the MACs (ResNet-20 -> ResNet-8), 8 fine-tune epochs at the rewound "
         "LR -> INT8 measured 10.6x smaller and 2.81x faster at batch 1 at -0.27 pt on the Quick tour's base", epochs=8),
)


def seeds_for(objective: str, space: list[str] | tuple[str, ...]) -> list[Seed]:
    """The seeds a search minimising ``objective`` over the candidates ``space`` runs first. A seed ending in INT8
    whose candidate is not searched but whose FP32 cut is (``prune`` for ``prune_int8``: a latency search on a GPU,
    ``for_device``) is seeded as that cut, with its measured epochs, and says so."""
    out = []
    for s in SEEDS:
        fp32 = FP32_OF.get(s.params["candidate"])
        if s.params["candidate"] not in space and fp32 in space:
            s = Seed({**s.params, "candidate": fp32}, f"{s.why} (seeded here without its INT8 step: INT8 is not "
                     "searched here)", s.objectives, s.epochs)
        if s.params["candidate"] in space and objective in s.objectives:
            out.append(s)
    return out


def _param(method: str, name: str) -> Param:
    return next(p for p in get(method).params if p.name == name)


def bounds(method: str, name: str, lo: float, hi: float) -> tuple[float, float]:
    """The registry range of ``method``'s ``name`` narrowed to [lo, hi] (open ends stay open)."""
    p = _param(method, name)
    eps = 1e-6
    low = lo if p.low is None else max(lo, p.low + (eps if p.low_open else 0.0))
    high = hi if p.high is None else min(hi, p.high - (eps if p.high_open else 0.0))
    if low > high:
        raise AssertionError(f"{method}.{name}: [{lo}, {hi}] lies outside the registry's {p.range_text()}")
    return low, high


def _choices(method: str, name: str, wanted: tuple[str, ...]) -> list[str]:
    allowed = _param(method, name).choices
    return [c for c in wanted if c in allowed]


@dataclass(frozen=True)
class Draw:
    method: dict[str, Any]          # {"name", "params"}: the child run's method
    recipe: str                     # one line a person reads: what the trial ran
    proxy: dict[str, float]         # known before training: {"macs": share of the start's, "size": ...}


def _cut(trial: Any, kind: str, finetune_epochs: int, kd: float) -> tuple[dict[str, Any], str, dict[str, float]]:
    """The pruning or low-rank step ``trial`` draws (``kind``: prune, blocks, lowrank), its recipe line and proxy."""
    if kind == "prune":
        keep = trial.suggest_float("prune.target_macs", *bounds("prune_structured", "target_macs", 0.1, 0.9))
        # A share the aligned widths cannot reach within the method's tolerance fails in seconds, before training.
        align = trial.suggest_categorical("prune.round_to", list(ALIGN))
        step = {"name": "prune_structured", "params": {"target_macs": keep, "finetune_epochs": finetune_epochs,
                                                       **({"round_to": align} if align > 1 else {}),
                                                       **({"finetune_kd": kd} if kd else {})}}
        return (step, f"prune_structured keeping {keep:.0%} of MACs"
                + (f", widths in multiples of {align}" if align > 1 else "") + f", {finetune_epochs} epoch"
                + (f" KD-assisted (weight {kd:g})" if kd else "") + " fine-tune", {"macs": keep})
    if kind == "blocks":
        keep = trial.suggest_float("blocks.target_macs", *bounds("prune_blocks", "target_macs", 0.2, 0.9))
        step = {"name": "prune_blocks", "params": {"target_macs": keep, "finetune_epochs": finetune_epochs,
                                                   **({"finetune_kd": kd} if kd else {})}}
        # Whole blocks: the share reached is the nearest count's, known after the cut; the proxy says nothing.
        return (step, f"prune_blocks to ~{keep:.0%} of MACs (whole residual blocks), {finetune_epochs} epoch"
                + (f" KD-assisted (weight {kd:g})" if kd else "") + " fine-tune", {})
    if kind == "lowrank":
        energy = trial.suggest_float("lowrank.energy", *bounds("lowrank_svd", "energy", 0.5, 0.99))
        step = {"name": "lowrank_svd", "params": {"energy": energy, "finetune_epochs": finetune_epochs}}
        return step, f"lowrank_svd keeping {energy:.0%} of the energy, {finetune_epochs} epoch fine-tune", {}
    raise AssertionError(f"unknown cut {kind}")


def draw(trial: Any, candidate: str, finetune_epochs: int, start_macs: float, start_params: float,
         num_classes: int, input_shape: tuple[int, int, int], small_input: bool, kd: float = 0.0,
         int8_format: str = "auto", int8_batches: int | None = None) -> Draw:
    """The recipe ``trial`` (an optuna.Trial) picks for ``candidate``; ``kd`` > 0: a distillation-assisted
    fine-tune of that weight where the method has one (structured pruning); ``int8_format``: the INT8 step's
    format (auto: quantize_int8's own choice, the fastest here that agrees with the FP32 model); ``int8_batches``:
    its calibration batches (None: quantize_int8's default)."""
    int8 = {"name": "quantize_int8", "params": {**({} if int8_format == "auto" else {"format": int8_format}),
                                                **({} if int8_batches is None else {"calibration_batches": int8_batches})}}
    if candidate == "quantize_int8":
        # The cheapest candidate: no knob, no training; the start as INT8 in the format fastest on this CPU.
        return Draw(int8, f"quantize_int8 of the start (format {int8_format})", {"macs": 1.0})
    if candidate in FP32_OF or candidate in FP32_OF.values():
        # A cut, then INT8 (prune_int8, ...), or the same cut alone (prune, ...): the same knobs, the same names.
        step, recipe, proxy = _cut(trial, candidate.removesuffix("_int8"), finetune_epochs, kd)
        if candidate in FP32_OF.values():
            return Draw(step, recipe + " (FP32, no INT8)", proxy)
        return Draw({"name": "pipeline", "params": {"steps": [step, int8]}},
                    recipe + " -> INT8" + ("" if int8_format == "auto" else f" ({int8_format})"), proxy)
    if candidate == "unstructured":
        amount = trial.suggest_float("unstructured.amount", *bounds("prune_unstructured", "amount", 0.3, 0.95))
        # Zeros are stored and counted dense: the model keeps the start's MACs and file size.
        return Draw({"name": "prune_unstructured", "params": {"amount": amount, "finetune_epochs": finetune_epochs}},
                    f"prune_unstructured zeroing {amount:.0%} of weights, {finetune_epochs} epoch fine-tune",
                    {"macs": 1.0, "size": 1.0})
    if candidate == "distill":
        student = trial.suggest_categorical("distill.student", _choices("distill", "student", STUDENTS))
        width = trial.suggest_float("distill.width", *bounds("distill", "width", 0.25, 1.0))
        net = models.build(student, num_classes, small_input=small_input, width=width)
        macs = measure.count_macs(net, input_shape)["macs"]
        params = sum(p.numel() for p in net.parameters())
        return Draw({"name": "distill", "params": {"student": student, "width": width, "epochs": finetune_epochs}},
                    f"distill into {student} x{width:.2f}, {finetune_epochs} epoch(s)",
                    {"macs": macs / start_macs, "size": params / start_params})
    raise AssertionError(f"unknown candidate {candidate}")

