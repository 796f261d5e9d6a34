"""Surgery: physically removing (or zeroing, or widening) channels with torch-pruning's dependency
graph, so residual adds, batch norms, depthwise groups and concatenations stay consistent.

The classifier's output is never touched. Criteria live in ``criterion``; schedules in ``schedule``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch_pruning as tp
from torchvision.models import VisionTransformer

from ... import export, models, user_models
from ...spec import SpecError
from . import criterion
from .criterion import is_depthwise, producing_filters

# Families whose graphs torch-pruning 1.6 cannot keep consistent, with the reason shown to the user.
UNSUPPORTED = {
    "shufflenet": "its channel split and shuffle (chunk + reshape) are not tracked by torch-pruning's "
                  "dependency graph, so channels cannot be removed consistently",
}
ROOT_TYPES = (nn.Conv2d, nn.Linear)


def check_supported(arch: str, method: str, model: nn.Module | None = None) -> None:
    """Refuse, before training, a model whose channels ``method`` cannot remove consistently (or whose
    bundle could not be rebuilt after it: a user's architecture with layers of other kinds)."""
    if model is not None:
        try:
            user_models.check_reshapeable(model, method)
        except user_models.UserModelError as e:
            raise SpecError("model", str(e)) from None
    family = models.ARCHS[arch].family if arch in models.ARCHS else None
    if family in UNSUPPORTED:
        supported = [a for a, spec in models.ARCHS.items() if spec.family not in UNSUPPORTED]
        raise SpecError("model", f"{method} cannot prune {arch}: {UNSUPPORTED[family]}; "
                        f"supported: {', '.join(supported)}")


def example_input(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    p = next(model.parameters())
    return torch.randn((1, *input_shape), device=p.device)


def protected(model: nn.Module) -> list[nn.Module]:
    """Layers whose outputs must keep their size: the classifier, and in a vision transformer every
    layer writing to the residual stream (patch embedding, attention, the MLPs' second Linear): its width
    is fixed by the class token and position embeddings, which are parameters, not layers, and which
    neither the dependency graph nor the bundle's manifest tracks. What remains is each block's MLP width;
    attention heads are removed whole by ``heads``, so no layer of the attention is a channel group."""
    keep = [models.classifier_layer(model)[1]]
    if isinstance(model, VisionTransformer):
        keep.append(model.conv_proj)
        for block in model.encoder.layers:
            keep += [*block.self_attention.modules(), block.mlp[3]]
    return keep


def loose_parameters(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """Parameters held outside the layers torch-pruning knows (ConvNeXt's layer scale, a ViT's class token
    and position embeddings), each with its channel dimension: the last one longer than 1, as torch-pruning
    would guess, stated so that it does not warn in every job's log."""
    known = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.MultiheadAttention)
    out = []
    for m in model.modules():
        if isinstance(m, known):
            continue
        for p in m.parameters(recurse=False):
            dims = [i for i, n in enumerate(p.shape) if n > 1]
            if dims:
                out.append((p, dims[-1]))
    return out


def graph(model: nn.Module, input_shape: tuple[int, ...]) -> tp.DependencyGraph:
    return tp.DependencyGraph().build_dependency(model, example_inputs=example_input(model, input_shape),
                                                 unwrapped_parameters=loose_parameters(model))


def channel_groups(DG: tp.DependencyGraph, model: nn.Module) -> list[tp.Group]:
    """Every prunable group with all its channels, the classifier's excluded."""
    return list(DG.get_all_groups(ignored_layers=protected(model), root_module_types=list(ROOT_TYPES)))


def root_of(group: tp.Group) -> tuple[nn.Module, object]:
    return group[0].dep.target.module, group[0].dep.handler


def group_layers(group: tp.Group, model: nn.Module) -> list[str]:
    """Names of the conv/linear layers a group touches, root first."""
    names = {m: n for n, m in model.named_modules()}
    out: list[str] = []
    for dep, _ in group:
        n = names.get(dep.target.module)
        if n is not None and isinstance(dep.target.module, ROOT_TYPES) and n not in out:
            out.append(n)
    return out


def make_pruner(model: nn.Module, input_shape: tuple[int, ...], importance: tp.importance.Importance,
                ratio: float, steps: int = 1, global_ranking: bool = False, max_ratio: float = 1.0,
                round_to: int | None = None) -> tp.pruner.BasePruner:
    """Pruning of ``ratio`` of the channels, reached in ``steps`` equal steps: of each group's (local),
    or of all channels ranked together (``global_ranking``; no group loses more than ``max_ratio``).
    With ``round_to`` every group keeps a multiple of it (torch-pruning rounds the kept count down)."""
    pruner = tp.pruner.BasePruner(model, example_input(model, input_shape), importance, pruning_ratio=ratio,
                                  iterative_steps=steps, ignored_layers=protected(model),
                                  global_pruning=global_ranking, max_pruning_ratio=max_ratio,
                                  root_module_types=list(ROOT_TYPES), unwrapped_parameters=loose_parameters(model))
    # Rounded here, not by torch-pruning's own round_to: it rounds the kept count *down*, which takes a
    # 16-channel layer asked to keep 8 with round_to=16 to 0 channels (and past max_ratio).
    pruner.slimbench_round_to = round_to or 1
    return pruner


def aligned_keep(keep: int, n: int, round_to: int) -> int:
    """``keep`` rounded up to a multiple of ``round_to`` (never above ``n``, the current width): a
    layer is never cut more than asked, and one narrower than ``round_to`` is left whole."""
    return min(n, -(-keep // round_to) * round_to)


def selected_groups(pruner: tp.pruner.BasePruner) -> Iterator[tp.Group]:
    """The groups (with the channels to drop) of the pruner's next step. No group keeps fewer than
    ``max_pruning_ratio`` allows of its initial width, nor fewer than one channel: torch-pruning checks
    that cap only before a step, so one global step could take a layer from 64 channels to 2. With the
    pruner's ``slimbench_round_to`` every group keeps a multiple of it (``aligned_keep``)."""
    r = getattr(pruner, "slimbench_round_to", 1)
    for group in pruner.step(interactive=True):
        module, handler = root_of(group)
        out = pruner.DG.is_out_channel_pruning_fn(handler)
        n = pruner.DG.get_out_channels(module) if out else pruner.DG.get_in_channels(module)
        idxs = list(group[0].idxs)
        if n is not None:
            init = (pruner.layer_init_out_ch if out else pruner.layer_init_in_ch).get(module) or n
            floor = max(1, math.ceil(init * (1 - pruner.max_pruning_ratio) - 1e-9))
            allowed = n - aligned_keep(max(n - len(idxs), floor), n, r)
            if allowed <= 0:
                continue
            if len(idxs) > allowed:  # drop only the least important of the chosen channels
                imp = pruner.estimate_importance(pruner.DG.get_pruning_group(module, handler, list(range(n))))
                if imp is not None:
                    idxs = sorted(idxs, key=lambda i: float(imp[i]))
                group = pruner.DG.get_pruning_group(module, handler, sorted(idxs[:allowed]))
        yield group


def prune_step(pruner: tp.pruner.BasePruner) -> None:
    """One step of physical channel removal."""
    for group in selected_groups(pruner):
        group.prune()


@torch.no_grad()
def zero_group(group: tp.Group, shift: bool = True, scale_only: bool = False) -> int:
    """Zero the group's selected channels (soft pruning); returns how many.

    Normally the producing filters are zeroed. With ``scale_only`` a group with batch norms has their
    scales (gamma) zeroed instead and keeps its filters: BN divides a filter by its batch standard
    deviation, so a zeroed filter's first small update comes back at full strength (its gradient
    at variance 0 is amplified ~1/sqrt(eps), ~316x); a zero gamma grows back only as fast as its
    gradient says the channel is worth, and keeps it silent meanwhile.

    With ``shift`` the filters, scales, shifts and running means all go to zero: otherwise a
    silenced channel still emits the constant ``beta - gamma * mean / std`` (``beta`` once gamma
    is 0) and removing it changes the network. Only before a removal, though: a channel that emits
    exactly 0 into a ReLU gets no gradient (ReLU's is 0 there), so it could never grow back.
    (Measured: with the shift zeroed at every epoch end, not one of 870 zeroed ResNet-18 filters
    recovered over two epochs; with filters alone, 65 and 25 did.)
    """
    norms = criterion.channel_norms(group) if scale_only and not shift else []
    for bn, idxs in norms:
        bn.weight[idxs] = 0
    if not norms:
        for layer, idxs, _ in producing_filters(group):
            layer.weight[idxs] = 0
            if layer.bias is not None:
                layer.bias[idxs] = 0
    for dep, idxs in group if shift else ():
        bn = dep.target.module
        if isinstance(bn, nn.modules.batchnorm._BatchNorm) and dep.handler == tp.prune_batchnorm_out_channels:
            if bn.weight is not None:
                bn.weight[idxs] = 0
            if bn.bias is not None:
                bn.bias[idxs] = 0
            if bn.running_mean is not None:
                bn.running_mean[idxs] = 0
    return len(group[0].idxs)


@torch.no_grad()
def zero_channels(group: tp.Group) -> torch.Tensor:
    """Per selected channel: True where all its producing filters are exactly zero."""
    zero = torch.ones(len(group[0].idxs), dtype=torch.bool)
    for layer, idxs, root_idxs in producing_filters(group):
        nonzero = layer.weight[idxs].flatten(1).ne(0).any(1).cpu()
        if layer.bias is not None:
            nonzero |= layer.bias[idxs].ne(0).cpu()
        pos = {r: i for i, r in enumerate(group[0].root_idxs)}
        for r, nz in zip(root_idxs, nonzero.tolist()):
            if nz:
                zero[pos[r]] = False
    return zero


@dataclass
class GroupScores:
    """One channel group of a model, by its root layer's name, with a score per channel."""
    root: str
    handler: Callable
    scores: torch.Tensor
    layers: list[str]


def score_groups(model: nn.Module, input_shape: tuple[int, ...], importance: tp.importance.Importance
                 ) -> list[GroupScores]:
    """Score every prunable group before any surgery (groups without a score, e.g. no batch norm
    for ``bn_scale``, are left out: they are not prunable by that criterion)."""
    DG = graph(model, input_shape)
    names = {m: n for n, m in model.named_modules()}
    out = []
    for group in channel_groups(DG, model):
        s = importance(group)
        if s is not None:
            module, handler = root_of(group)
            out.append(GroupScores(names[module], handler, s.detach().float().cpu(), group_layers(group, model)))
    return out


def apply_plan(model: nn.Module, input_shape: tuple[int, ...], plan: dict[str, tuple[Callable, list[int]]]) -> None:
    """Remove channels given per group as {root layer name: (handler, root channel indices)}.
    Root indices do not shift when other groups are pruned, so groups are pruned one by one."""
    DG = graph(model, input_shape)
    for name, (handler, idxs) in plan.items():
        if idxs:
            DG.get_pruning_group(model.get_submodule(name), handler, sorted(idxs)).prune()


def lowest(scores: torch.Tensor, count: int) -> list[int]:
    """Indices of the ``count`` lowest scores, always leaving the best channel in place."""
    count = min(count, len(scores) - 1)
    return torch.argsort(scores)[:max(0, count)].tolist()


def widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv layer (and hidden linear), the classifier excluded."""
    head = protected(model)[0]
    return {n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, ROOT_TYPES) and m is not head}


def layer_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[nn.Module, int]:
    """MACs per image of every conv and linear layer (from their output sizes)."""
    out: dict[nn.Module, int] = {}

    def hook(m, _inp, y):
        per_out = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1] if isinstance(m, nn.Conv2d) \
            else m.in_features
        out[m] = y[0].numel() * per_out

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, ROOT_TYPES)]
    try:
        with torch.no_grad():
            model.eval()(example_input(model, input_shape))
    finally:
        for h in handles:
            h.remove()
    return out


def pruned_copy(model: nn.Module, prune) -> nn.Module:
    """A deep copy of ``model`` with ``prune(copy)`` applied; the original is untouched. Gradients
    travel too (deepcopy drops them): the taylor criterion ranks the copy by them."""
    clone = copy.deepcopy(model)
    for p, q in zip(model.parameters(), clone.parameters()):
        if p.grad is not None:
            q.grad = p.grad.clone()
    prune(clone)
    return clone


# --------------------------------------------------------------------------------------------
# Widening (MorphNet's expand step): scale every group's width and rebuild from the manifest
# --------------------------------------------------------------------------------------------
def widened(model: nn.Module, input_shape: tuple[int, ...], arch: str, num_classes: int, small_input: bool,
            factor: float) -> nn.Module:
    """A freshly initialised copy of ``model``'s architecture with every prunable group's channel
    count multiplied by ``factor`` (rounded, at least 1). Sizes change by the group's delta, so
    concatenations (DenseNet, SqueezeNet) and depthwise convs (in = out = groups) stay consistent.
    The classifier's outputs and the image channels are unchanged."""
    DG = graph(model, input_shape)
    names = {m: n for n, m in model.named_modules()}
    man = export.manifest(model)
    for group in channel_groups(DG, model):
        n = len(group[0].idxs)
        delta = max(1, round(n * factor)) - n
        touched: set[tuple[str, str]] = set()
        for dep, _ in group:
            name = names.get(dep.target.module)
            if name is None or name not in man:
                continue
            d, layer = man[name], dep.target.module
            side = "out" if DG.is_out_channel_pruning_fn(dep.handler) else "in"
            if is_depthwise(layer) or isinstance(layer, nn.modules.batchnorm._BatchNorm):
                side = "both"  # one channel count for input and output
            if (name, side) in touched:
                continue
            touched.add((name, side))
            _resize(d, side, delta)
    fresh = models.build(arch, num_classes, small_input, getattr(model, "slimbench_width", 1.0))
    return export.apply_manifest(fresh, man)


def _resize(d: dict, side: str, delta: int) -> None:
    t = d["type"]
    if t == "Conv2d":
        if side == "both":
            for k in ("in_channels", "out_channels", "groups"):
                d[k] += delta
        elif d["groups"] != 1:
            raise ValueError("grouped (non-depthwise) convolutions cannot be widened uniformly")
        else:
            d["out_channels" if side == "out" else "in_channels"] += delta
    elif t == "Linear":
        d["out_features" if side == "out" else "in_features"] += delta
    elif t in export.BATCHNORMS:
        d["num_features"] += delta
