"""Low-rank decomposition of convolutions and linear layers by truncated SVD.

A k x k conv (C_in -> C_out) becomes a k x k conv with r filters followed by a 1 x 1 conv
(r -> C_out); a linear layer becomes two linears through r features. The weight matrix
W (C_out x C_in*k*k) = U S V^T is cut to its first r singular values; sqrt(S) goes to each side
so both factors have similar scale for fine-tuning. A layer is only replaced when r makes it
cheaper: r * (C_in*k*k + C_out) < C_out * C_in*k*k.

Optionally (Yang et al. 2020, "Learning low-rank deep neural networks via singular vector
orthogonality regularization and singular value sparsification"; TRP-style) the model first
trains in an explicit W = U diag(s) V form with an orthogonality penalty on U and V and an L1
penalty on s, which pushes energy into fewer singular values, so the later cut loses less.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear
import torch.nn.functional as F

from .. import measure
from ..spec import SpecError
from . import MIN_MAC_SAVING, Param, register


# --------------------------------------------------------------------------------------------
# Shapes and costs
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def output_sizes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Spatial size (H*W; 1 for linears) of each conv/linear layer's output for one image."""
    sizes: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            def hook(mod, inp, out, name=name):
                sizes[name] = int(out[0].numel() // out.shape[1])  # positions per image: H*W or 1
            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        model(torch.zeros((1, *input_shape), device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return sizes


def weight_matrix(m: nn.Module) -> torch.Tensor:
    """The layer's weight as a 2-D matrix: rows are outputs, columns are (C_in, kh, kw) taps."""
    return m.weight.detach().reshape(m.weight.shape[0], -1)


def thin_svd(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, S, V^T of ``w``. LAPACK is many times slower on wide matrices (conv weights are C_out x
    C_in*k*k, usually wide), so a wide matrix is decomposed through its transpose."""
    if w.shape[0] < w.shape[1]:
        u, s, vh = torch.linalg.svd(w.T, full_matrices=False)
        return vh.T, s, u.T
    return torch.linalg.svd(w, full_matrices=False)


def singular_values(w: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(w.T if w.shape[0] < w.shape[1] else w)


def eligible(m: nn.Module) -> bool:
    # Attention's output projection is read as a weight by nn.MultiheadAttention itself (not called as a
    # layer): two factors in its place would break the attention, so it stays whole.
    if isinstance(m, NonDynamicallyQuantizableLinear):
        return False
    return isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)


def factor_cost(m: nn.Module, rank: int) -> tuple[int, int]:
    """(weights of the original layer, weights of the two factors at ``rank``); MACs scale alike."""
    rows, cols = weight_matrix(m).shape
    return rows * cols, rank * (cols + rows)


def choose_rank(s: torch.Tensor, energy: float | None, rank_ratio: float | None) -> int:
    """Smallest rank keeping ``energy`` of sum(s^2), or ``rank_ratio`` of the full rank."""
    full = len(s)
    if rank_ratio is not None:
        return max(1, min(full, round(rank_ratio * full)))
    e = (s.double() ** 2).cumsum(0)
    share = e / e[-1].clamp_min(1e-300)
    return min(full, int((share < energy - 1e-9).sum().item()) + 1)


# --------------------------------------------------------------------------------------------
# Decomposition
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def decompose(m: nn.Module, rank: int) -> nn.Sequential:
    """Two layers whose product is the best rank-``rank`` approximation of ``m``'s weight."""
    w = weight_matrix(m).double()
    u, s, vh = thin_svd(w)
    root = s[:rank].sqrt()
    first = (root[:, None] * vh[:rank]).to(m.weight.dtype)      # rank x cols
    second = (u[:, :rank] * root[None, :]).to(m.weight.dtype)   # rows x rank
    bias = m.bias is not None
    if isinstance(m, nn.Linear):
        a = nn.Linear(m.in_features, rank, bias=False)
        b = nn.Linear(rank, m.out_features, bias=bias)
        a.weight.copy_(first)
        b.weight.copy_(second)
    else:
        a = nn.Conv2d(m.in_channels, rank, m.kernel_size, m.stride, m.padding, m.dilation, bias=False,
                      padding_mode=m.padding_mode)
        b = nn.Conv2d(rank, m.out_channels, 1, bias=bias)
        a.weight.copy_(first.reshape(rank, *m.weight.shape[1:]))
        b.weight.copy_(second.reshape(*second.shape, 1, 1))
    if bias:
        b.bias.copy_(m.bias)
    return nn.Sequential(a, b).to(m.weight.device)


def replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.Sequential) and leaf.isdigit():
        parent[int(leaf)] = new
    else:
        setattr(parent, leaf, new)


def plan_ranks(model: nn.Module, input_shape: tuple[int, ...], energy: float | None,
               rank_ratio: float | None) -> dict[str, dict[str, Any]]:
    """Per eligible layer: chosen rank, full rank, and the params/MACs before and after.

    Only layers where the factors are cheaper than the original are listed.
    """
    sizes = output_sizes(model, input_shape)
    plan = {}
    for name, m in model.named_modules():
        if not eligible(m) or name not in sizes:
            continue
        s = singular_values(weight_matrix(m).double())
        rank = choose_rank(s, energy, rank_ratio)
        before, after = factor_cost(m, rank)
        if after >= before:
            continue
        plan[name] = {"rank": rank, "full_rank": len(s), "params_before": before, "params_after": after,
                      "macs_before": before * sizes[name], "macs_after": after * sizes[name],
                      "energy_kept": float(((s[:rank] ** 2).sum() / (s ** 2).sum().clamp_min(1e-300)).item())}
    return plan


def apply_plan(model: nn.Module, plan: dict[str, dict[str, Any]]) -> nn.Module:
    for name, p in plan.items():
        replace(model, name, decompose(model.get_submodule(name), p["rank"]))
    return model


# --------------------------------------------------------------------------------------------
# Training in U diag(s) V form (orthogonality + singular-value sparsity)
# --------------------------------------------------------------------------------------------
class SVDParametrised(nn.Module):
    """A conv/linear whose weight is U diag(s) V during regularised training."""

    def __init__(self, m: nn.Module):
        super().__init__()
        w = weight_matrix(m).double()
        u, s, vh = thin_svd(w)
        dt = m.weight.dtype
        self.u = nn.Parameter(u.to(dt))
        self.s = nn.Parameter(s.to(dt))
        self.v = nn.Parameter(vh.to(dt))
        self.bias = None if m.bias is None else nn.Parameter(m.bias.detach().clone())
        self.shape = tuple(m.weight.shape)
        self.conv = None if isinstance(m, nn.Linear) else \
            {"stride": m.stride, "padding": m.padding, "dilation": m.dilation}

    def weight(self) -> torch.Tensor:
        return ((self.u * self.s) @ self.v).reshape(self.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            return F.linear(x, self.weight(), self.bias)
        return F.conv2d(x, self.weight(), self.bias, **self.conv)

    def penalties(self) -> tuple[torch.Tensor, torch.Tensor]:
        r = len(self.s)
        eye = torch.eye(r, device=self.s.device, dtype=self.s.dtype)
        ortho = ((self.u.T @ self.u - eye) ** 2).sum() + ((self.v @ self.v.T - eye) ** 2).sum()
        return ortho / r ** 2, self.s.abs().sum()

    @torch.no_grad()
    def to_plain(self) -> nn.Module:
        w = self.weight()
        if self.conv is None:
            m = nn.Linear(self.shape[1], self.shape[0], bias=self.bias is not None)
        else:
            m = nn.Conv2d(self.shape[1], self.shape[0], tuple(self.shape[2:]), bias=self.bias is not None,
                          **self.conv)
        m.weight.copy_(w)
        if self.bias is not None:
            m.bias.copy_(self.bias)
        return m.to(w.device)


def regularised_training(model: nn.Module, ctx, names: list[str], orthogonal_reg: float, sv_sparsity: float,
                         epochs: int) -> None:
    for name in names:
        replace(model, name, SVDParametrised(model.get_submodule(name)))
    svd_layers = [model.get_submodule(n) for n in names]

    def regularizer(_: nn.Module) -> torch.Tensor:
        ortho, l1 = zip(*(layer.penalties() for layer in svd_layers))
        return orthogonal_reg * torch.stack(ortho).sum() + sv_sparsity * torch.stack(l1).sum()

    try:
        # keep the last epoch: the most accurate one is the least regularised, and the spectrum cut
        # below relies on what the penalty did
        ctx.finetune(model, epochs=epochs, phase="lowrank-regularised", regularizer=regularizer, keep_best=False)
    finally:  # back to plain layers whatever happened, so the model stays exportable
        for name, layer in zip(names, svd_layers):
            replace(model, name, layer.to_plain())


def require_saving(model: nn.Module, input_shape: tuple[int, ...], energy: float | None, ratio: float | None,
                   plan: dict[str, dict[str, Any]], regularised: bool) -> None:
    """Refuse a truncation that saves under MIN_MAC_SAVING of the model's MACs (energy 0.9 saved
    0-9 % on every architecture tried): the field named, what it would change, what to set instead."""
    total = measure.count_macs(model, input_shape)["macs"]
    saved = sum(p["macs_before"] - p["macs_after"] for p in plan.values())
    if saved >= MIN_MAC_SAVING * total:
        return
    field, value = ("rank_ratio", ratio) if ratio is not None else ("energy", energy)
    alt = plan_ranks(model, input_shape, None, 0.25)
    alt_saved = sum(p["macs_before"] - p["macs_after"] for p in alt.values()) / max(1, total)
    after = " after the regularised training" if regularised else ""
    raise SpecError(f"method.params.{field}", f"{field} {value:g} would decompose {len(plan)} layer(s) and remove "
                    f"{saved / max(1, total):.1%} of the MACs{after} (under {MIN_MAC_SAVING:.0%}: the model would "
                    f"come back almost unchanged); keep fewer singular values, e.g. rank_ratio 0.25 "
                    f"({alt_saved:.0%} of the MACs), or a lower energy")


def _check(params: dict, spec: Any) -> None:
    if params["energy"] is not None and params["rank_ratio"] is not None:
        raise SpecError("method.params.rank_ratio", "give either energy or rank_ratio, not both")
    if (params["orthogonal_reg"] > 0 or params["sv_sparsity"] > 0) and params["reg_epochs"] < 1:
        raise SpecError("method.params.reg_epochs", "orthogonal_reg/sv_sparsity need reg_epochs >= 1")


@register("lowrank_svd", family="low-rank", check=_check, params=[
    Param("energy", "float", None, "share of the squared singular values each layer keeps (default 0.9 "
          "when rank_ratio is not given)", low=0.0, high=1.0, low_open=True, optional=True),
    Param("rank_ratio", "float", None, "keep this share of each layer's full rank instead of an energy share",
          low=0.0, high=1.0, low_open=True, optional=True),
    Param("orthogonal_reg", "float", 0.0, "weight of the orthogonality penalty on U and V while training in "
          "decomposed form (Yang et al. 2020); 0 = off", low=0.0, high=100.0),
    Param("sv_sparsity", "float", 0.0, "weight of the L1 penalty on the singular values while training in "
          "decomposed form; 0 = off", low=0.0, high=1.0),
    Param("reg_epochs", "int", 2, "epochs of regularised training before the cut (only when a penalty is on)",
          low=0, high=1000),
    Param("finetune_epochs", "int", 1, "fine-tuning epochs after the cut", low=0, high=1000),
], help="Replace convs by k x k (r filters) + 1 x 1 and linears by two linears from a truncated SVD; a layer "
        "is only decomposed when it saves MACs. Optional orthogonality/singular-value-L1 training first.")
def lowrank_svd(model, ctx, params):
    energy, ratio = params["energy"], params["rank_ratio"]
    if energy is None and ratio is None:
        energy = 0.9
    regularised = params["orthogonal_reg"] > 0 or params["sv_sparsity"] > 0
    if regularised:
        names = [n for n, m in model.named_modules() if eligible(m)]
        regularised_training(model, ctx, names, params["orthogonal_reg"], params["sv_sparsity"],
                             params["reg_epochs"])
    # Unregularised, nothing has trained yet: a no-op is refused before any training. Regularised,
    # the penalties reshape the spectrum, so only now is the cut known (still before the fine-tune).
    model.to("cpu")
    plan = plan_ranks(model, ctx.input_shape, energy, ratio)
    require_saving(model, ctx.input_shape, energy, ratio, plan, regularised)
    apply_plan(model, plan)
    ctx.log.info("low-rank: %d layers decomposed", len(plan))
    ctx.recalibrate(model, "truncation")
    ctx.extra["lowrank_layers"] = plan
    ctx.extra["lowrank_params_saved"] = sum(p["params_before"] - p["params_after"] for p in plan.values())
    ctx.extra["lowrank_macs_saved"] = sum(p["macs_before"] - p["macs_after"] for p in plan.values())
    if params["finetune_epochs"] > 0 and plan:
        ctx.finetune(model, epochs=params["finetune_epochs"])
    return model
