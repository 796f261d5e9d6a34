"""Self-attention whose heads can be removed: a drop-in for torchvision's ``nn.MultiheadAttention``.

``nn.MultiheadAttention`` ties its inner width (heads x head size) to the residual stream's: its
projections are one ``in_proj_weight`` of 3E x E and an E x E ``out_proj``. Removing a head must narrow
the inner width only, so a pruned vision transformer's attention is this module instead: separate
``q``/``k``/``v`` Linears E -> heads*head_dim and ``out_proj`` heads*head_dim -> E, as Torch-Pruning's
head pruning expects of timm's and Hugging Face's attention. Plain matmul + softmax, so the MAC counter
sees the attention products and ONNX export needs no attention operator.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class HeadAttention(nn.Module):
    """Batch-first self-attention with ``num_heads`` heads of ``head_dim`` on an ``embed_dim`` stream,
    called like ``nn.MultiheadAttention`` (``attn(x, x, x, need_weights=False)`` -> ``(out, None)``)."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, bias: bool = True):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim, self.has_bias = embed_dim, num_heads, head_dim, bias
        inner = num_heads * head_dim
        self.q = nn.Linear(embed_dim, inner, bias)
        self.k = nn.Linear(embed_dim, inner, bias)
        self.v = nn.Linear(embed_dim, inner, bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias)

    @classmethod
    @torch.no_grad()
    def from_mha(cls, mha: nn.MultiheadAttention) -> "HeadAttention":
        """The same attention (same outputs) as a batch-first ``nn.MultiheadAttention``."""
        if not mha.batch_first or not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("only a batch-first self-attention without bias_k/bias_v/add_zero_attn converts")
        e = mha.embed_dim
        out = cls(e, mha.num_heads, mha.head_dim, mha.in_proj_bias is not None)
        out.to(device=mha.in_proj_weight.device, dtype=mha.in_proj_weight.dtype)
        for i, lin in enumerate((out.q, out.k, out.v)):
            lin.weight.copy_(mha.in_proj_weight[i * e:(i + 1) * e])
            if lin.bias is not None:
                lin.bias.copy_(mha.in_proj_bias[i * e:(i + 1) * e])
        out.out_proj.weight.copy_(mha.out_proj.weight)
        if out.out_proj.bias is not None:
            out.out_proj.bias.copy_(mha.out_proj.bias)
        return out.train(mha.training)

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                need_weights: bool = False, **_unused) -> tuple[torch.Tensor, None]:
        key = query if key is None else key
        value = key if value is None else value
        b, n, h, d = query.shape[0], query.shape[1], self.num_heads, self.head_dim

        def heads(t: torch.Tensor) -> torch.Tensor:  # (b, tokens, h*d) -> (b, h, tokens, d)
            return t.reshape(b, -1, h, d).transpose(1, 2)

        q, k, v = heads(self.q(query)), heads(self.k(key)), heads(self.v(value))
        weights = torch.softmax(q @ k.transpose(-2, -1) * d ** -0.5, dim=-1)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(b, n, h * d)), None

    def consistent(self) -> bool:
        """Whether the projections fit the head count and size (a manifest could say otherwise). A
        projection may be a Sequential of Linears (low-rank factors in its place)."""
        inner, e = self.num_heads * self.head_dim, self.embed_dim
        return all(_features(p) == want for p, want in ((self.q, (e, inner)), (self.k, (e, inner)),
                                                         (self.v, (e, inner)), (self.out_proj, (inner, e))))

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}"


def _features(m: nn.Module) -> tuple[int, int] | None:
    """(in, out) features of a Linear or of a chain of Linears; None for anything else."""
    chain = list(m) if isinstance(m, nn.Sequential) else [m]
    if not chain or not all(isinstance(x, nn.Linear) for x in chain):
        return None
    return chain[0].in_features, chain[-1].out_features
