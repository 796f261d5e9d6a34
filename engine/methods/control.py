"""Controls: did compressing beat simply training a smaller net of the same family?

``control`` takes a finished structured, low-rank, factorisation or distillation run (``of_run``),
builds the same family scaled in width (CIFAR ResNets also in depth, where no width matches) to that
run's MACs within ``TOLERANCE``, trains it from scratch with the same total epoch budget, and then
scores the compressed run's model on this job's test images, so the two are compared paired: only
the images whose answers differ carry information (``stats.paired_difference``).

The epoch budget counts every epoch the compressed model's weights went through: each run of its
parent chain (the base trained from scratch, then each derived run) contributes the epochs its own
training history records, a pipeline the epochs of its steps. Epochs a base spent before Slimbench
(ImageNet weights, an imported checkpoint) are not known and not counted; the record says so.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from .. import cifar_nets, measure, models, stats, training
from ..spec import SpecError
from . import Param, load_all, makes_torch_model, register
from .distill import _teacher_as_trained

TOLERANCE = 0.05          # the control's MACs within ±5 % of the compressed run's
FAMILIES = ("pruning", "low-rank", "factorization", "distillation")
# In those families but no smaller architecture to match: unstructured zeros leave dense MACs as they
# are, a sensitivity analysis returns its base unchanged, and compact is itself trained from scratch.
NOT_CONTROLLED = ("prune_unstructured", "sensitivity", "compact")
WIDTHS = (0.05, 2.0)      # the widths searched (models.build's multiplier)
FIELD = "method.params.of_run"


def controllable(method: dict[str, Any]) -> bool:
    """Whether a spec's ``method`` ({"name", "params"}) makes a result a control can be trained for:
    a structured, low-rank, factorisation or distillation method, or a pipeline with such a step that
    ends in a PyTorch model."""
    name = method.get("name")
    if name == "pipeline":
        steps = (method.get("params") or {}).get("steps") or []
        return makes_torch_model(method) and any(isinstance(s, dict) and controllable(s) for s in steps)
    m = load_all().get(name)
    return m is not None and m.family in FAMILIES and m.name not in NOT_CONTROLLED


def candidates(arch: str, depth: int | None = None) -> list[str]:
    """The architectures a control may take: the run's own, scaled in width; for a CIFAR ResNet also
    the other depths of its family (nearest depth first), where width alone misses the MACs. ``depth``:
    the compressed model's own depth where whole blocks were removed (``prune_blocks``): that depth of the
    family, where registered, is tried first, so a ResNet-20 less 3 blocks is controlled by a ResNet-14."""
    own = models.ARCHS[arch]
    if own.family != "cifar_resnet":
        return [arch]
    depth_of = lambda a: int(a.removeprefix("resnet"))  # noqa: E731
    same = [a for a, s in models.ARCHS.items() if s.family == own.family and s.native]
    return sorted(same, key=lambda a: (depth_of(a) != depth, a != arch, abs(depth_of(a) - depth_of(arch))))


def cifar_resnet_depth(model: torch.nn.Module) -> int:
    """A CIFAR ResNet's depth as built (6n + 2 for n basic blocks per stage; 2 + 2 per block left after
    ``prune_blocks``): its weighted layers on the main path."""
    return 2 + 2 * sum(isinstance(m, cifar_nets.BasicBlock) for m in model.modules())


def dense_macs(arch: str, width: float, num_classes: int, small_input: bool, input_shape: tuple[int, ...]) -> int:
    """``measure.count_macs``'s dense MACs of a fresh ``arch`` at ``width``, counted on the meta device:
    no weights are allocated or initialised, which made a search over VGG-16 widths take minutes."""
    with torch.device("meta"):
        net = models.build(arch, num_classes, small_input, width)
    with FlopCounterMode(display=False) as fc:
        net.eval()(torch.zeros((1, *input_shape), device="meta"))
    return int(fc.get_total_flops()) // 2


def match_macs(arch: str, target: int, num_classes: int, small_input: bool,
               input_shape: tuple[int, ...], depth: int | None = None) -> tuple[str, float, int]:
    """(arch, width, MACs) of the control nearest ``target`` MACs within ``TOLERANCE``: per candidate
    architecture, the width is bisected on ``measure.count_macs`` (MACs grow with width, in steps as
    channel counts round), and the nearer of the two widths around the target is kept."""
    if not models.has_width(arch):
        raise SpecError(FIELD, f"the run's architecture {arch} has no width multiplier (nor depths) to scale a "
                               f"control with; controls are built for {', '.join(a for a in models.ARCHS if models.has_width(a))}")
    cache: dict[tuple[str, float], int] = {}

    def macs(a: str, w: float) -> int:
        if (a, w) not in cache:
            cache[a, w] = dense_macs(a, w, num_classes, small_input, input_shape)
        return cache[a, w]

    tried = []
    for a in candidates(arch, depth):
        lo, hi = WIDTHS
        if not macs(a, lo) <= target <= macs(a, hi):
            tried.append(f"{a} spans {macs(a, lo):,}-{macs(a, hi):,}")
            continue
        for _ in range(13):  # (2.0 - 0.05) / 2^13: finer than a channel of a 512-wide layer
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if macs(a, mid) < target else (lo, mid)
        w = min((lo, hi), key=lambda w: abs(macs(a, w) - target))
        if abs(macs(a, w) / target - 1) <= TOLERANCE:
            return a, w, macs(a, w)
        tried.append(f"{a} at width {w:.3f} gives {macs(a, w):,}")
    raise SpecError(FIELD, f"no control of the run's family reaches its {target:,} MACs within "
                           f"{100 * TOLERANCE:g} % ({'; '.join(tried)})")


def epoch_budget(store, run_id: str) -> tuple[int, str]:
    """Epochs the run's weights trained for, over its parent chain (and a pipeline's steps), with how
    they were counted in words."""
    parts, seen, total, unknown = [], set(), 0, None
    while run_id and run_id not in seen:
        seen.add(run_id)
        row = store.get(run_id) or {}
        rec = row.get("record") or {}
        steps = rec.get("pipeline_runs") or []
        own = sum(len((((store.get(s) or {}).get("record") or {}).get("history")) or []) for s in steps) \
            if steps else len(rec.get("history") or [])
        total += own
        parts.append(f"{run_id} ({rec.get('method') or '?'}) {own}")
        model = (row.get("spec") or {}).get("model") or {}
        if model.get("pretrained") or model.get("checkpoint"):
            unknown = "pretrained weights" if model.get("pretrained") else "an imported checkpoint"
        run_id = rec.get("parent")
    how = "epochs of each run in the chain: " + " + ".join(parts)
    if unknown:
        how += f"; the training behind {unknown} is not counted"
    return total, how


def _same_data(spec_data: dict[str, Any], run_data: dict[str, Any]) -> None:
    """The control trains and tests on the run's data: every data setting but the batch size equal."""
    for k, v in spec_data.items():
        if k != "batch_size" and run_data.get(k, v) != v:
            raise SpecError(f"data.{k}", f"is {v!r} but the run the control is for used {run_data.get(k)!r}; a "
                                         "control must train and test on the same data")


@register("control", family="control", params=[
    Param("of_run", "run", None, "the compressed run (structured, low-rank, factorisation or distillation) this "
          "control is trained for"),
], help="Train the run's family scaled in width (or depth) to its MACs (±5 %) from scratch, with the same total "
        "epoch budget, and compare the run with it on the same test images: did compressing beat simply training "
        "a smaller net?")
def control(model, ctx, params):
    run_id = params["of_run"]
    row = ctx.store.get(run_id) or {}
    method = (row.get("spec") or {}).get("method") or {}
    if row and not controllable(method):
        raise SpecError(FIELD, f"run {run_id} is a {method.get('name')} result; a control is trained for structured "
                               "pruning, low-rank, factorisation or distillation results, whose architecture shrank")
    # as it was trained: re-normalised where its statistics differ from this job's (load_run refuses a
    # run that is not done)
    compressed = _teacher_as_trained(ctx, run_id, FIELD).eval()
    rec = (ctx.store.get(run_id) or {}).get("record") or {}
    _same_data(ctx.spec.to_dict()["data"], (row.get("spec") or {}).get("data") or {})
    if rec.get("test_set_hash") and rec["test_set_hash"] != ctx.data.test.content_hash():
        raise SpecError("data", f"this job's test images differ from those run {run_id} was scored on")
    arch, small = rec.get("arch"), bool(rec.get("small_input"))
    if arch not in models.ARCHS:
        raise SpecError(FIELD, f"run {run_id}'s architecture {arch} is not one Slimbench builds")
    target = int(measure.count_macs(compressed.to("cpu"), ctx.input_shape)["macs"])
    depth = cifar_resnet_depth(compressed) if models.ARCHS[arch].family == "cifar_resnet" else None
    c_arch, width, c_macs = match_macs(arch, target, ctx.data.num_classes, small, ctx.input_shape, depth)
    epochs, how = epoch_budget(ctx.store, run_id)
    if epochs < 1:
        raise SpecError(FIELD, f"run {run_id} records no training epochs to match ({how})")
    ctx.log.info("control of %s: %s width %.4f, %d MACs (run: %d), %d epochs (%s)", run_id, c_arch, width, c_macs,
                 target, epochs, how)

    net = models.build(c_arch, ctx.data.num_classes, small, width)
    models.check_input_fits(net, c_arch, ctx.input_shape, FIELD)
    ctx.set_arch(c_arch, small)
    ctx.fit(net, epochs=epochs, phase="train")

    ctx.progress(phase="evaluate:control")
    mine, ys = training.predict(net.to(ctx.device), ctx.data.loader("test", ctx.device), ctx.device, ctx.cancelled)
    theirs, ys2 = training.predict(compressed.to(ctx.device), ctx.data.loader("test", ctx.device), ctx.device,
                                   ctx.cancelled)
    compressed.to("cpu")
    if not torch.equal(ys, ys2):
        raise RuntimeError("the test loader yielded a different order on a second pass")
    ctx.extra.update(paired(theirs, mine, ys))
    ctx.extra.update({"control_of": run_id, "control_arch": c_arch, "control_width": width,
                      "control_target_macs": target, "control_macs_ratio": c_macs / target,
                      "control_epochs": epochs, "control_epochs_counted": how})
    return net


def paired(compressed_logits: torch.Tensor, control_logits: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """The compressed model against its control on the same images: Δ (compressed − control, points),
    its 95 % interval and McNemar's p, from the answers only one of them got right."""
    right, ctrl_right = compressed_logits.argmax(1) == y, control_logits.argmax(1) == y
    only_compressed, only_control = int((right & ~ctrl_right).sum()), int((~right & ctrl_right).sum())
    diff = stats.paired_difference(only_compressed, only_control, len(y))
    return {"control_of_accuracy": right.double().mean().item(),
            "control_delta_pt": 100 * (right.double().mean() - ctrl_right.double().mean()).item(),
            "control_delta_ci95_pt": [100 * v for v in diff["ci95"]], "control_mcnemar_p": diff["p"]}
