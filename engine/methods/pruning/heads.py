"""Attention-head pruning of a vision transformer (prune_structured's ``head_ratio``).

As in Torch-Pruning's ``prune_num_heads``: a head is ranked by its weights (the mean of its q/k/v rows and
its out_proj columns under the channel criterion) and removed whole, so the inner width shrinks by a
head size at a time while the residual stream keeps its width. torchvision's ``nn.MultiheadAttention``
cannot hold fewer heads than its stream's width allows, so each is first swapped for the equivalent
``HeadAttention`` (same outputs), whose shape the bundle's manifest records.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models import VisionTransformer

from ...attention import HeadAttention


def attentions(model: nn.Module) -> dict[str, nn.Module]:
    """Every encoder block's self-attention of a torchvision VisionTransformer, by name."""
    if not isinstance(model, VisionTransformer):
        return {}
    return {f"encoder.layers.{n}.self_attention": block.self_attention
            for n, block in model.encoder.layers.named_children()}


def make_prunable(model: nn.Module) -> dict[str, int]:
    """Swap every ``nn.MultiheadAttention`` of a ViT for a ``HeadAttention`` computing the same;
    returns each attention's head count."""
    out = {}
    for name, attn in attentions(model).items():
        if isinstance(attn, nn.MultiheadAttention):
            attn = HeadAttention.from_mha(attn)
            block = model.get_submodule(name.rpartition(".")[0])
            block.self_attention = attn
        out[name] = attn.num_heads
    return out


@torch.no_grad()
def head_scores(attn: HeadAttention, criterion: str) -> torch.Tensor:
    """One importance per head: the mean over its q/k/v rows and out_proj columns of |w| (l1), w^2 (l2)
    or |w * dL/dw| (taylor, where gradients were accumulated; else l1)."""
    h, d = attn.num_heads, attn.head_dim

    def score(w: torch.Tensor) -> torch.Tensor:
        if criterion == "taylor" and w.grad is not None:
            return (w * w.grad).abs()
        return w.pow(2) if criterion == "l2" else w.abs()

    rows = sum(score(lin.weight).reshape(h, d, -1).mean((1, 2)) for lin in (attn.q, attn.k, attn.v))
    cols = score(attn.out_proj.weight).reshape(-1, h, d).mean((0, 2))
    return (rows / 3 + cols).float().cpu()


@torch.no_grad()
def remove_heads(attn: HeadAttention, drop: list[int]) -> None:
    """Remove the listed heads (and their gradients) in place."""
    keep_heads = [i for i in range(attn.num_heads) if i not in set(drop)]
    d = attn.head_dim
    idx = torch.tensor([i * d + j for i in keep_heads for j in range(d)], device=attn.q.weight.device)

    def cut(p: nn.Parameter, dim: int) -> nn.Parameter:
        new = nn.Parameter(p.data.index_select(dim, idx).clone(), requires_grad=p.requires_grad)
        if p.grad is not None:
            new.grad = p.grad.index_select(dim, idx).clone()
        return new

    for lin in (attn.q, attn.k, attn.v):
        lin.weight = cut(lin.weight, 0)
        if lin.bias is not None:
            lin.bias = cut(lin.bias, 0)
        lin.out_features = len(idx)
    attn.out_proj.weight = cut(attn.out_proj.weight, 1)
    attn.out_proj.in_features = len(idx)
    attn.num_heads = len(keep_heads)


def kept(initial: int, share: float) -> int:
    """Heads left of ``initial`` once ``share`` of them is removed (rounded down; at least one stays)."""
    return max(1, initial - int(share * initial + 1e-9))


def prune_heads(model: nn.Module, initial: dict[str, int], share: float, criterion: str) -> None:
    """Bring every block's attention to ``kept(initial heads, share)`` heads, the least important going."""
    for name, attn in attentions(model).items():
        excess = attn.num_heads - kept(initial[name], share)
        if excess > 0:
            drop = torch.argsort(head_scores(attn, criterion))[:excess].tolist()
            remove_heads(attn, drop)


def head_counts(model: nn.Module) -> dict[str, int]:
    return {name: attn.num_heads for name, attn in attentions(model).items()}
