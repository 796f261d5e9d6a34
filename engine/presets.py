"""Ready-made experiment plans: a baseline plus every registered compression method.

A plan is a list of spec dicts. A spec may start from an earlier spec of the same plan through
``model.from_run = ref(i)`` (a placeholder replaced by that job's id at launch; the worker lets a
queued job name a queued parent). Presets are built from the method registry, so a method
appears in them as soon as it is registered.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import estimate, methods, settings
from .errors import SpecError
from .store import Store
from .validation import check_spec

REF_PREFIX = "PLAN-"


def ref(i: int) -> str:
    """Placeholder run id meaning "the job launched from spec i of this plan"."""
    return f"{REF_PREFIX}{i}"


BASE = ref(0)
SHARED_CIFAR10 = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "cifar10.zip"


# A pipeline in the tours: prune then quantize, the classic combination (steps that are registered).
PIPELINE_STEPS = ("prune_structured", "quantize_int8")

# -- Quick tour (CPU) ------------------------------------------------------------------------------
# CIFAR ResNet-20 at 16 px trains ~1,800 img/s alone on the 2 cores. Measured by hand (one thread, the
# machine shared): 6 epochs on this data reached 0.886 top-1 on the full 10k test set, validation
# 0.8845 -> 0.8877 in the last epoch (converged: < 1 pt); 9,000 images x 5 epochs stayed at 0.823. The
# validation split (val_fraction) is drawn from all 60,000 training images before `limit` applies, so the
# base trains on 30,000 images (469 steps of 64 an epoch) and selects on 6,000 others.
# From that base every method landed well above chance (lowest: the depthwise rewrite at 0.81), and the
# distilled half-width student beat the same student trained plainly (0.852 vs 0.829).
# 16 px keeps Fashion-MNIST's garments recognisable at a third of 28 px's cost.
QUICK_DATA = {"name": "fashion-mnist", "limit": 30000, "val_fraction": 0.1, "image_size": 16}
QUICK_ARCH = "resnet20"
QUICK_BASE_EPOCHS = 6
# The student learns in the budget (half-width ResNet-20: a quarter of the MACs); distill and its
# plain control ("compact") train the same student for the same epochs, so KD vs plain is fair.
QUICK_STUDENT = {"student": "resnet20", "width": 0.5, "epochs": 3}
# Small settings beyond epoch counts: sensitivity at its defaults prunes up to 32 layers x 3 ratios.
# A cut with a published anchor (bench/quick_tour.py ANCHORS) is sized to that anchor's MAC reduction, so its
# Δ reads against a like cut, and gets the recovery epochs measured to bring it near the anchor within the
# tour's 600 s. Measured from the tour's own base (in process, one thread, the 2-core machine shared; base
# 0.8887, LR rewinding, Δ on all 10,000 test images; docs/BENCHMARKS.md "The Quick tour's rows"):
QUICK_STRUCT_MACS_KEPT = 1 / 2.1   # DepGraph's ResNet-56 2.11x
QUICK_LOWRANK_MACS_KEPT = 0.35     # ~2.9x: TRP's ResNet-20 2.84x
QUICK_OVERRIDES: dict[str, dict[str, Any]] = {
    "sensitivity": {"max_layers": 8, "ratios": [0.3, 0.6]},
    "distill": QUICK_STUDENT, "compact": QUICK_STUDENT,
    # An SVD-initialised depthwise rewrite starts far from the base: with one fine-tune epoch the CPU
    # bench's ResNet-18 landed at chance (0.102), so it gets two.
    "factorize": {"finetune_epochs": 2},
    # Uniform L1 at 1/2.1 of the MACs: 1 fine-tune epoch -2.78 pt, 2 epochs -1.01, 3 epochs -0.10 (the old
    # ratio 0.5 cut 3.96x, -3.87 with 1 epoch). The pipeline row's structured step is this one.
    "prune_structured": {"target_macs": QUICK_STRUCT_MACS_KEPT, "finetune_epochs": 3},
    # SFP (its default 30 % cuts this ResNet-20 2.11x, as the anchor's ResNet-56) on He et al.'s schedule, its
    # default: 2 soft epochs, hard cut, no fine-tune: -1.24 pt, where 1 soft + 1 fine-tune (the tour's
    # earlier 2 epochs) scored -1.85 (paired +0.61, CI +0.15 to +1.07; docs/BENCHMARKS.md "unstructured 90 %
    # and SFP on the recipes-cpu base"). A third epoch costs ~29 s, which the structured row's third spends.
    "soft_filter_pruning": {"epochs": 2},
    # TRP (channel): its own 2 training epochs (the 1-epoch floor halved them), its ranks held at 0.35 of
    # the MACs (unheld, energy 0.9 compounds to 3.2x), 2 fine-tune epochs: -1.01 pt at 2.88x.
    "lowrank_svd": {"reg_epochs": 2, "target_macs": QUICK_LOWRANK_MACS_KEPT, "finetune_epochs": 2},
    # Block (layer) pruning: 3 of ResNet-20's 7 identity blocks, greedy (it removed one per stage: ResNet-14's
    # layout, 1.53x fewer MACs), 1 fine-tune epoch at the rewound rate: -1.42 pt (-1.86 to -0.98); 3 epochs
    # +0.02 (-0.37 to +0.41) but ~2 more ResNet-14 epochs (docs/BENCHMARKS.md, "Block pruning").
    "prune_blocks": {"blocks": 3},
    # No torch.compile here: compiling (in its child process) was most of the row's 172 s of the measured 1188 s
    # tour, for a figure the tour does not judge; the row keeps eager vs ONNX Runtime, and `python -m bench
    # runtimes` measures compile.
    "runtime": {"compile": False},
}
QUICK_MEASURE = {"onnx": True, "latency_runs": 10, "warmup_runs": 2, "paired_rounds": 3}

# -- CPU, thorough ---------------------------------------------------------------------------------
# Full-resolution Fashion-MNIST (28 px), 18,000 training images, 15 base epochs (~0.91 top-1 expected;
# ResNet-20 at 28 px trains ~630 img/s alone on the 2 cores: ~29 s an epoch); methods at the settings
# a practitioner would start from: iterative pruning in 3 steps with 2 fine-tune epochs each, SFP
# and slimming with several epochs, students trained 8 epochs.
THOROUGH_DATA = {"name": "fashion-mnist", "limit": 20000, "val_fraction": 0.1}
THOROUGH_BASE_EPOCHS = 15
THOROUGH_STUDENT = {"student": "resnet20", "width": 0.5, "epochs": 8}
THOROUGH_PARAMS: dict[str, dict[str, Any]] = {
    # Zhu & Gupta's gradual schedule to 90 % over the epochs three rounds of two took
    "prune_unstructured": {"amount": 0.9, "schedule": "gradual", "finetune_epochs": 6},
    "prune_structured": {"ratio": 0.5, "steps": 3, "finetune_epochs": 2},
    # He et al.'s schedule, the method's default: every epoch soft-prunes, the hard cut ends it, no fine-tune after
    # (4 soft + 0 scored +0.86 pt over 3 soft + 1 fine-tune at the same epochs; soft_filter.py's docstring)
    "soft_filter_pruning": {"ratio": 0.3, "epochs": 6},
    "slimming": {"target_macs": 0.5, "epochs": 3, "finetune_epochs": 2},
    "lowrank_svd": {"route": "trp", "energy": 0.9, "reg_epochs": 3, "finetune_epochs": 2},
    "factorize": {"mode": "depthwise_separable", "finetune_epochs": 3},
    "distill": THOROUGH_STUDENT, "compact": THOROUGH_STUDENT,
}
THOROUGH_MEASURE = {"onnx": True, "latency_runs": 30, "warmup_runs": 5}

# -- CIFAR-10, literature setting (GPU) ----------------------------------------------------------
# Epochs per net, chosen to fit one <= 9-minute device call with their measurements (see the docstring).
LITERATURE_EPOCHS = {"resnet18": 40, "resnet56": 90, "resnet20": 100}
LITERATURE_TARGETS = {"resnet18": 0.940, "resnet56": 0.930, "resnet20": 0.915}


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


def _thorough_params(method: methods.Method) -> dict[str, Any]:
    if method.name == "pipeline":
        return {"steps": _pipeline_steps(_thorough_params)}
    return dict(THOROUGH_PARAMS.get(method.name, {}))


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
        if m.family == "search":  # a search runs many jobs of its own: launched alone (engine autocompress)
            continue
        specs.append({"name": f"{name}: {m.name}", "data": copy.deepcopy(data), "model": {"from_run": BASE},
                      "method": {"name": m.name, "params": param_fn(m)}, "train": dict(child_train),
                      "measure": dict(measure)})
    return specs


def quick_tour() -> list[dict[str, Any]]:
    """Fashion-MNIST (``QUICK_DATA``: 30,000 training images at 16 px, 6,000 more held out for validation,
    scored on the full 10,000-image test set), CIFAR ResNet-20: a ``QUICK_BASE_EPOCHS`` (6)-epoch base, then
    every registered method from it at a small setting: each epoch count at its smallest useful value (1, or
    its lower bound), except where ``QUICK_OVERRIDES`` says (the cuts with a published anchor sized to that
    anchor's MAC reduction, with the recovery epochs measured to bring them near it; the depthwise rewrite's
    and TRP's 2 epochs), and the half-width ResNet-20 student (``QUICK_STUDENT``) trained 3 epochs with and
    without distillation.

    A base >= 0.85 whose last epoch gains < 1 pt; aimed at under 10 minutes on a quiet 2-core CPU, measured at
    14.8 (``bench.quick_tour`` times it through the real queue and judges every row: docs/BENCHMARKS.md).
    """
    return _plan("Quick tour", dict(QUICK_DATA), QUICK_ARCH, {"epochs": QUICK_BASE_EPOCHS, "device": "cpu"},
                 {"epochs": 1, "device": "cpu"}, dict(QUICK_MEASURE), _quick_params)


def cpu_thorough() -> list[dict[str, Any]]:
    """Fashion-MNIST at 28 px (20,000 training images, full test set), CIFAR ResNet-20: a 15-epoch base
    (>= 0.90), then every method at a practitioner's settings (``THOROUGH_PARAMS``), and a control for
    each structured, low-rank, factorisation and distillation result. About an hour on 2 CPU cores:
    base ~15 x 29 s, the methods ~43 epoch-equivalents, the six controls ~120 epochs of nets with a
    quarter to two thirds of the base's MACs (~55 epoch-equivalents), measurement ~10 s a job."""
    return with_controls(_plan("CPU, thorough", dict(THOROUGH_DATA), QUICK_ARCH,
                               {"epochs": THOROUGH_BASE_EPOCHS, "device": "cpu"}, {"epochs": 2, "device": "cpu"},
                               dict(THOROUGH_MEASURE), _thorough_params), "CPU, thorough")


def cifar10_resnet18_gpu(path: str | None = None) -> list[dict[str, Any]]:
    """Full CIFAR-10, ResNet-18 (small-input stem) on CUDA: 30-epoch base, method defaults, each
    structured, low-rank, factorisation and distillation result with its control."""
    path = path or settings.cifar10() or str(SHARED_CIFAR10)
    data = {"name": "cifar10", "path": path, "batch_size": 256}
    measure = {"onnx": True, "latency_runs": 30, "warmup_runs": 5}
    return with_controls(_plan("CIFAR-10 ResNet-18", data, "resnet18", {"epochs": 30, "device": "cuda"},
                               {"epochs": 5, "device": "cuda"}, measure, _default_params), "CIFAR-10 ResNet-18")


def cifar10_literature(path: str | None = None, *, epochs: dict[str, int] | None = None, device: str = "cuda",
                       data: dict[str, Any] | None = None, measure: dict[str, Any] | None = None
                       ) -> list[dict[str, Any]]:
    """The literature's CIFAR-10 bases, trained with the engine's default recipe: ResNet-18 (small-input
    stem), ResNet-56 and ResNet-20 on the full training set, batch 512; targets 94.0 / 93.0 / 91.5 %.

    Why these epochs fit one 9-minute device call: an H100 trained ResNet-18 with our loop at ~2.3 s an
    epoch (12 epochs in 28 s, batch 256); at batch 512 and on an H200 that is ~2 s, so 40 epochs (the
    published 94-95 % recipes use 30-40 with one-cycle/cosine) take ~90 s. ResNet-56 has a quarter of
    ResNet-18's MACs but 55 thin layers, so at 32x32 its step is bound by kernel launches, not FLOPs:
    ~2 s an epoch, 90 epochs ~180 s (a cosine schedule reaches ~93.5 % in 90-100 epochs, against 164
    in He et al.). ResNet-20 runs ~1 s an epoch; its 91.5 % target sits within 1 pt of the best published
    figure (92.6 %, 200 epochs), so it gets the most epochs, 100 (~100 s). Training ~370 s, plus process
    start, the CIFAR load and each base's measurement (~20 s each) leaves a minute of the 9 spare.
    ``epochs``, ``device``, ``data`` and ``measure`` shrink it for tests.
    """
    path = path or settings.cifar10() or str(SHARED_CIFAR10)
    data = data or {"name": "cifar10", "path": path, "batch_size": 512}
    measure = measure or {"onnx": True, "latency_runs": 30, "warmup_runs": 5, "paired_rounds": 0}
    specs = []
    for arch, n in (epochs or LITERATURE_EPOCHS).items():
        specs.append({"name": f"CIFAR-10 literature: {arch} baseline", "data": copy.deepcopy(data),
                      "model": {"arch": arch}, "method": {"name": "baseline", "params": {}},
                      "train": {"epochs": n, "device": device}, "measure": dict(measure)})
    return specs


@dataclass(frozen=True)
class Preset:
    """A plan with what it uses and how long it takes, said before it is launched."""
    label: str            # its jobs are named "<label>: <method>": how its past runs are found
    build: Callable[[], list[dict[str, Any]]]
    uses: str             # data, model and settings, in a sentence or two
    device: str           # "cpu" or "cuda": where its jobs train
    estimate_s: float     # stated estimate on the machine it was sized for
    basis: str            # where that estimate comes from

    def __call__(self) -> list[dict[str, Any]]:
        return self.build()


PRESETS: dict[str, Preset] = {
    "Quick tour (CPU)": Preset(
        "Quick tour", quick_tour,
        f"Fashion-MNIST, {QUICK_DATA['limit']:,} training images at {QUICK_DATA['image_size']} px, scored on the "
        f"full 10,000-image test set; CIFAR ResNet-20 base trained {QUICK_BASE_EPOCHS} epochs on CPU; every "
        "registered method at a small setting, mostly 1-epoch fine-tunes; as their published anchors, "
        f"structured pruning cuts {1 / QUICK_STRUCT_MACS_KEPT:.1f}x fewer MACs (3 fine-tune epochs), soft filter "
        f"pruning 30 % of each layer's filters, about as many, low-rank TRP {1 / QUICK_LOWRANK_MACS_KEPT:.1f}x "
        "(2 epochs, 2 fine-tune); distillation "
        f"and its plain control train a half-width ResNet-20 for {QUICK_STUDENT['epochs']} epochs each. No "
        "controls: each would train a smaller net from scratch for the epochs its run's weights had (the base's "
        "and the method's), which would double the tour; \"CPU, thorough\" has them.",
        "cpu", 889, "the whole tour measured at 889 s through the queue on a 2-core AMD EPYC with nothing else "
        "running (bench cpu, 2026-12-02 18:40, jobs one at a time; 879 s of it in the jobs): the base 145 s, low-rank "
        "119 s (their chain, 264 s, is the critical path), structured 84 s, the pipeline 83 s, every other row 8-61 s; "
        "two 1-thread jobs at a time left the base alone on one thread for over 7.5 min, so the default stays one "
        "at a time"),
    "CPU, thorough": Preset(
        "CPU, thorough", cpu_thorough,
        f"Fashion-MNIST at full 28 px, {THOROUGH_DATA['limit']:,} training images, full test set; CIFAR ResNet-20 "
        f"base trained {THOROUGH_BASE_EPOCHS} epochs on CPU; pruning in 3 steps with 2 fine-tune epochs each "
        f"(structured 50 %, unstructured 80 %), SFP and slimming with several epochs, students "
        f"{THOROUGH_STUDENT['epochs']} epochs; each structured, low-rank, factorisation and distillation result "
        "gets its control (the same family scaled to its MACs, trained from scratch with its epoch budget).",
        "cpu", 3700, "estimated: ResNet-20 at 28 px trains ~630 img/s alone on 2 CPU cores, ~58 epoch-"
        "equivalents of 18,000 images for the base and methods and ~55 for the six controls, plus measurement"),
    "CIFAR-10, literature setting (GPU)": Preset(
        "CIFAR-10 literature", cifar10_literature,
        "Full CIFAR-10 (50,000 training images, 10,000 test) at 32 px on CUDA, batch 512, the default recipe: "
        + ", ".join(f"{a} {n} epochs (target {100 * LITERATURE_TARGETS[a]:.1f} %)" for a, n in LITERATURE_EPOCHS.items())
        + "; bases only, each measured.",
        "cuda", 480, "estimated from an H100's 2.3 s ResNet-18 epoch with this loop; sized to fit one "
        "9-minute device call"),
    "CIFAR-10 ResNet-18 (GPU)": Preset(
        "CIFAR-10 ResNet-18", cifar10_resnet18_gpu,
        "Full CIFAR-10 at 32 px on CUDA, batch 256; ResNet-18 (small-input stem) base trained 30 epochs; "
        "every registered method at its defaults (5-epoch fine-tunes), each structured, low-rank, factorisation "
        "and distillation result with its control.",
        "cuda", 1150, "estimated: ~2.3 s a ResNet-18 epoch on an H100, 30 base epochs and ~13 jobs of "
        "5 fine-tune epochs, six controls of ~35 epochs at about half the MACs, plus measurement"),
}


def describe(name: str, store: Store | None = None, concurrency: int = 1) -> str:
    """What the preset uses and how long it takes on this machine: estimated from the runs finished here
    (``engine.estimate``), else said to have no history here, with the stated estimate for the machine
    it was sized on and its basis."""
    p = PRESETS[name]
    est = estimate_plan(p(), store, concurrency) if store is not None else None
    if est is not None and est.seconds is not None:
        return f"{p.uses} {est.text()}"
    where = "2 CPU cores" if p.device == "cpu" else "one H100/H200"
    return (f"{p.uses} No run like its jobs has finished on this machine yet. Sized for {where}: about "
            f"{estimate.duration(p.estimate_s)} there ({p.basis}); not measured here.")


def estimate_plan(plan: list[dict[str, Any]], store: Store, concurrency: int = 1) -> estimate.PlanEstimate:
    """The wall time of ``plan`` on this machine from the runs finished here (the jobs that do not
    validate are left out, as a launch would leave them)."""
    ok, _ = check(plan)
    canonical = [check_spec(resolve([s], ref(0))[0]).to_dict() for s in ok]  # as the store keeps them
    return estimate.plan(canonical, store, concurrency, parents=[estimate.plan_parent(s) for s in ok])


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
    {"from_run": id}, {"checkpoint": path} (the checkpoint is first scored and measured as it is,
    or fine-tuned for ``base_train["epochs"]``, so it has a run of its own that every method is
    compared with) or {"file": ...} (the user's own architecture: a Python file's model is trained
    first, a program or weights handled as a checkpoint). ``steps`` lists (method, params variants); with ``chain`` each step starts from
    the previous step's result (a pipeline of jobs).
    """
    specs: list[dict[str, Any]] = []
    start: dict[str, Any] = dict(model)
    prefix = f"{name}: " if name else ""
    if model.get("arch") or model.get("checkpoint") or model.get("file"):
        file = model.get("file") or ""
        given = model.get("checkpoint") or model.get("weights") or (file if file.endswith(".pt2") else None)
        if given:  # trained weights: scored as they are, or fine-tuned, first
            label = f"{Path(given).stem} " + ("fine-tuned" if base_train.get("epochs") else "as given")
        else:
            path, _, builder = file.rpartition(":")
            label = (f"baseline {model['arch']}" + (" from ImageNet weights" if model.get("pretrained") else "")
                     if model.get("arch") else f"baseline {Path(path).name}:{builder}")
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


def with_controls(plan: list[dict[str, Any]], label: str | None = None) -> list[dict[str, Any]]:
    """``plan`` with a control job appended for each structured, low-rank, factorisation or distillation
    job: the same start and data, trained from scratch to that job's MACs with its epoch budget
    (method ``control``, ``of_run = ref(i)``). Appended at the end, so every earlier ref(i) still holds.
    With a preset's ``label`` a control is named "<label>: control of <method>", as the preset's jobs are."""
    from .methods import control  # imports torch: only where controls are asked for
    out = copy.deepcopy(plan)
    for i, s in enumerate(plan):
        if not control.controllable(s.get("method") or {}):
            continue
        name = f"{label}: control of {s['method']['name']}" if label else \
            f"control of {s.get('name') or s['method']['name']}"
        out.append({"name": name, "data": copy.deepcopy(s["data"]),
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
