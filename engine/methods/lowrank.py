"""Low-rank decomposition of convolutions and linear layers by truncated SVD, one-shot or trained.

Two decompositions of a k x k conv (C_in -> C_out), each the best rank-r approximation of one way
of reading its weight as a matrix:

- ``channel`` (Zhang et al. 2016; TRP's channel-wise scheme): W as C_out x (C_in*k*k); the pair is a
  k x k conv with r filters, then a 1 x 1 conv (r -> C_out). Linears become two linears through r
  features. Every conv/linear qualifies.
- ``spatial`` (Jaderberg et al. 2014, scheme 2; TRP's spatial-wise scheme): W as (C_in*kh) x
  (C_out*kw); the pair is a kh x 1 conv with r filters, then a 1 x kw conv (r -> C_out). Only
  convs with kh, kw > 1 qualify (1 x 1 convs and linears stay as they are).

sqrt(S) goes to each factor so both have similar scale for fine-tuning. A layer is only replaced
when r makes it cheaper in MACs.

Three routes to the ranks:

- ``one_shot``: truncate the trained weights at ``energy`` (or ``rank_ratio``), then fine-tune.
- ``trp`` (Xu et al. 2020, "TRP: Trained Rank Pruning for Efficient Deep Neural Networks"): train
  with a nuclear-norm penalty (sum of singular values; its gradient is U V^T) and, every
  ``trp_interval`` steps, replace each weight by its truncated SVD at ``energy``: training goes on
  in the full shape but on low-rank weights, so each truncation finds a spectrum already pushed
  into fewer values and the ranks fall during training. With ``target_macs`` the ranks stop falling
  where the cut would keep that share of the MACs (``RankFloor``). Then the cut at those ranks (or at
  ``energy``) and the fine-tune. The TRP phase's learning rate (``reg_lr``) matters most: from the Quick
  tour's base, 2.88x at -2.42 pt with it at a tenth of the training rate, -1.00 pt at the rate itself
  (the paper trains at the normal schedule; docs/BENCHMARKS.md "TRP on the Quick tour base").
- ``svd_reg`` (Yang et al. 2020, "Learning low-rank deep neural networks via singular vector
  orthogonality regularization and singular value sparsification"): train in explicit
  W = U diag(s) V form with an orthogonality penalty on U and V and an L1 penalty on s, which
  drives small singular values to zero; then the cut at ``energy`` and the fine-tune.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear
import torch.nn.functional as F

from .. import measure
from ..spec import SpecError
from . import MIN_MAC_SAVING, Param, recovery, register

DECOMPOSITIONS = ("channel", "spatial")
ROUTES = ("trp", "svd_reg", "one_shot")


# --------------------------------------------------------------------------------------------
# Shapes and costs
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def io_sizes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """(input H, W), (output H, W) of each conv/linear layer for one image; () for linears."""
    sizes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            def hook(mod, inp, out, name=name):
                sizes[name] = (tuple(inp[0].shape[2:]), tuple(out.shape[2:]))
            hooks.append(m.register_forward_hook(hook))
    measure.forward_once(model, input_shape, hooks)
    return sizes


def _positions(hw: tuple[int, ...]) -> int:
    return int(torch.tensor(hw).prod().item()) if hw else 1


def output_sizes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Spatial size (H*W; 1 for linears) of each conv/linear layer's output for one image."""
    return {name: _positions(out) for name, (_, out) in io_sizes(model, input_shape).items()}


def weight_matrix(m: nn.Module, decomposition: str = "channel") -> torch.Tensor:
    """The layer's weight as the matrix the decomposition factorises (a view of it: gradients flow).
    channel: rows are outputs, columns are (C_in, kh, kw) taps; spatial: rows (C_in, kh), columns
    (C_out, kw)."""
    if decomposition == "spatial":
        c_out, c_in, kh, kw = m.weight.shape
        return m.weight.permute(1, 2, 0, 3).reshape(c_in * kh, c_out * kw)
    return m.weight.reshape(m.weight.shape[0], -1)


def matrix_to_weight(mat: torch.Tensor, shape: tuple[int, ...], decomposition: str) -> torch.Tensor:
    """The inverse of ``weight_matrix``."""
    if decomposition == "spatial":
        c_out, c_in, kh, kw = shape
        return mat.reshape(c_in, kh, c_out, kw).permute(2, 0, 1, 3).reshape(shape)
    return mat.reshape(shape)


def thin_svd(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, S, V^T of ``w``. LAPACK is many times slower on wide matrices (conv weights are C_out x
    C_in*k*k, usually wide), so a wide matrix is decomposed through its transpose."""
    if w.shape[0] < w.shape[1]:
        u, s, vh = torch.linalg.svd(w.T, full_matrices=False)
        return vh.T, s, u.T
    return torch.linalg.svd(w, full_matrices=False)


def singular_values(w: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(w.T if w.shape[0] < w.shape[1] else w)


def eligible(m: nn.Module, decomposition: str = "channel") -> bool:
    # Attention's output projection is read as a weight by nn.MultiheadAttention itself (not called as a
    # layer): two factors in its place would break the attention, so it stays whole.
    if isinstance(m, NonDynamicallyQuantizableLinear):
        return False
    if decomposition == "spatial":
        return isinstance(m, nn.Conv2d) and m.groups == 1 and min(m.kernel_size) > 1
    return isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)


def factor_cost(m: nn.Module, rank: int, decomposition: str = "channel",
                io: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())) -> dict[str, int]:
    """Weights and MACs (one image) of the layer and of its two factors at ``rank``. Spatial: the
    kh x 1 factor runs at the output's height but the input's width, the 1 x kw one at the output's."""
    rows, cols = weight_matrix(m, decomposition).shape
    out = _positions(io[1])
    if decomposition == "spatial":
        c_out, c_in, kh, kw = m.weight.shape
        first, second = rank * c_in * kh, rank * c_out * kw
        mid = io[1][0] * io[0][1] if io[1] else 1
        return {"params_before": rows * cols, "params_after": first + second,
                "macs_before": rows * cols * out, "macs_after": first * mid + second * out}
    return {"params_before": rows * cols, "params_after": rank * (rows + cols),
            "macs_before": rows * cols * out, "macs_after": rank * (rows + cols) * out}


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
def decompose(m: nn.Module, rank: int, decomposition: str = "channel") -> nn.Sequential:
    """Two layers whose product is the best rank-``rank`` approximation of ``m``'s weight matrix."""
    w = weight_matrix(m, decomposition).detach().double()
    u, s, vh = thin_svd(w)
    rank = min(rank, len(s))
    root = s[:rank].sqrt()
    left = (u[:, :rank] * root[None, :]).to(m.weight.dtype)     # rows x rank
    right = (root[:, None] * vh[:rank]).to(m.weight.dtype)      # rank x cols
    bias = m.bias is not None
    if isinstance(m, nn.Linear):
        a = nn.Linear(m.in_features, rank, bias=False)
        b = nn.Linear(rank, m.out_features, bias=bias)
        a.weight.copy_(right)
        b.weight.copy_(left)
    elif decomposition == "spatial":
        c_out, c_in, kh, kw = m.weight.shape
        a = nn.Conv2d(c_in, rank, (kh, 1), (m.stride[0], 1), (m.padding[0], 0), (m.dilation[0], 1), bias=False)
        b = nn.Conv2d(rank, c_out, (1, kw), (1, m.stride[1]), (0, m.padding[1]), (1, m.dilation[1]), bias=bias)
        a.weight.copy_(left.T.reshape(rank, c_in, kh, 1))
        b.weight.copy_(right.reshape(rank, c_out, kw).permute(1, 0, 2).reshape(c_out, rank, 1, kw))
    else:
        a = nn.Conv2d(m.in_channels, rank, m.kernel_size, m.stride, m.padding, m.dilation, bias=False,
                      padding_mode=m.padding_mode)
        b = nn.Conv2d(rank, m.out_channels, 1, bias=bias)
        a.weight.copy_(right.reshape(rank, *m.weight.shape[1:]))
        b.weight.copy_(left.reshape(*left.shape, 1, 1))
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
               rank_ratio: float | None, decomposition: str = "channel",
               ranks: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """Per eligible layer: chosen rank (``ranks[name]`` where given, else by energy / rank_ratio), full
    rank, and the params/MACs before and after.

    Only layers where the factors have fewer MACs than the original are listed.
    """
    sizes = io_sizes(model, input_shape)
    plan = {}
    for name, m in model.named_modules():
        if not eligible(m, decomposition) or name not in sizes:
            continue
        s = singular_values(weight_matrix(m, decomposition).detach().double())
        rank = ranks[name] if ranks and name in ranks else choose_rank(s, energy, rank_ratio)
        cost = factor_cost(m, rank, decomposition, sizes[name])
        if cost["macs_after"] >= cost["macs_before"]:
            continue
        plan[name] = {"rank": rank, "full_rank": len(s), "decomposition": decomposition, **cost,
                      "energy_kept": float(((s[:rank] ** 2).sum() / (s ** 2).sum().clamp_min(1e-300)).item())}
    return plan


def apply_plan(model: nn.Module, plan: dict[str, dict[str, Any]]) -> nn.Module:
    for name, p in plan.items():
        replace(model, name, decompose(model.get_submodule(name), p["rank"], p.get("decomposition", "channel")))
    return model


def rank_share(model: nn.Module, names: list[str], energy: float | None, rank_ratio: float | None,
               decomposition: str) -> float:
    """Mean over ``names`` of (rank chosen) / (full rank): how far the spectra have fallen."""
    shares = []
    for n in names:
        s = singular_values(weight_matrix(model.get_submodule(n), decomposition).detach().double())
        shares.append(choose_rank(s, energy, rank_ratio) / len(s))
    return sum(shares) / max(1, len(shares))


# --------------------------------------------------------------------------------------------
# TRP: nuclear-norm training with periodic truncation (Xu et al. 2020)
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def truncate_in_place(layer: nn.Module, rank: int, decomposition: str) -> None:
    """Replace ``layer``'s weight by its best rank-``rank`` approximation (same shape, lower rank)."""
    mat = weight_matrix(layer, decomposition).detach().double()
    u, s, vh = thin_svd(mat)
    low = (u[:, :rank] * s[:rank]) @ vh[:rank]
    layer.weight.copy_(matrix_to_weight(low, tuple(layer.weight.shape), decomposition).to(layer.weight.dtype))


class RankFloor:
    """``target_macs`` for TRP: the ranks fall with each truncation until the cut at them would keep
    ``target`` of the model's MACs, then stay there (a rank floor) for the rest of the training and
    for the cut. At energy 0.9 the truncations compound and overshoot (the Quick tour's base: 3.2x
    fewer MACs where TRP's published ResNet-20 point is 2.84x); the floor stops them at the target.
    The truncation that would cross the target is taken only part of the way, each layer's rank the
    same fraction of its step down, the smallest fraction that reaches the target."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], names: list[str], decomposition: str,
                 target: float):
        sizes = io_sizes(model, input_shape)
        self.total = measure.count_macs(model, input_shape)["macs"]
        # a layer's cost depends on its shape only: computed once, so the hook needs no model walk
        self.costs = {n: [factor_cost(model.get_submodule(n), r, decomposition, sizes[n])
                          for r in range(min(weight_matrix(model.get_submodule(n), decomposition).shape) + 1)]
                      for n in names}
        self.target = target
        self.held: dict[str, int] | None = None

    def kept(self, ranks: dict[str, int]) -> float:
        """Share of the model's MACs the cut at ``ranks`` keeps (a layer only factorised where cheaper)."""
        saved = sum(max(0, c[r]["macs_before"] - c[r]["macs_after"]) for n, r in ranks.items()
                    for c in (self.costs[n],))
        return (self.total - saved) / self.total

    def ranks(self, previous: dict[str, int], proposed: dict[str, int]) -> dict[str, int]:
        """The ranks to truncate at, given the last truncation's and this one's by energy."""
        if self.held is not None:
            return self.held
        if self.kept(proposed) > self.target:
            return proposed

        def part(t: float) -> dict[str, int]:
            return {n: max(proposed[n], round(previous[n] - t * (previous[n] - proposed[n]))) for n in proposed}
        lo, hi = 0.0, 1.0                      # kept(part(hi)) <= target throughout
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if self.kept(part(mid)) <= self.target else (mid, hi)
        self.held = part(hi)
        return self.held


def trp_training(model: nn.Module, ctx, names: list[str], decomposition: str, energy: float | None,
                 rank_ratio: float | None, nuclear_reg: float, interval: int, epochs: int,
                 lr: float | None = None, floor: RankFloor | None = None) -> list[float]:
    """Train with ``nuclear_reg`` x the nuclear norm of every layer's matrix, truncating every weight at
    ``energy`` every ``interval`` steps (not below ``floor``'s ranks once it holds). Returns the mean
    rank share (rank / full rank) after each truncation: the ranks the training has reached."""
    shares: list[float] = []
    steps = [0]
    ranks: dict[str, int] = {}

    # Both hooks take the model (a DDP rank gets its own pickled copy), never ctx.
    def nuclear(m: nn.Module) -> torch.Tensor:
        return nuclear_reg * torch.stack([singular_values(weight_matrix(m.get_submodule(n), decomposition).float())
                                          .sum() for n in names]).sum()

    def truncate_every_interval(m: nn.Module) -> None:
        steps[0] += 1
        if steps[0] % interval:
            return
        spectra = {n: singular_values(weight_matrix(m.get_submodule(n), decomposition).detach().double())
                   for n in names}
        proposed = {n: choose_rank(s, energy, rank_ratio) for n, s in spectra.items()}
        chosen = floor.ranks(ranks or {n: len(s) for n, s in spectra.items()}, proposed) if floor else proposed
        for n in names:
            truncate_in_place(m.get_submodule(n), chosen[n], decomposition)
        ranks.update(chosen)
        shares.append(sum(chosen[n] / len(spectra[n]) for n in names) / max(1, len(names)))

    # the last epoch: the cut below relies on what the truncations did, and an earlier epoch's weights
    # were truncated fewer times
    ctx.finetune(model, epochs=epochs, lr=lr, phase="lowrank-trp",
                 regularizer=nuclear if nuclear_reg > 0 else None, after_step=truncate_every_interval,
                 keep_best=False)
    return shares


# --------------------------------------------------------------------------------------------
# Training in U diag(s) V form (orthogonality + singular-value sparsity; Yang et al. 2020)
# --------------------------------------------------------------------------------------------
class SVDParametrised(nn.Module):
    """A conv/linear whose weight matrix (in the chosen decomposition's layout) is U diag(s) V
    during regularised training."""

    def __init__(self, m: nn.Module, decomposition: str = "channel"):
        super().__init__()
        w = weight_matrix(m, decomposition).detach().double()
        u, s, vh = thin_svd(w)
        dt = m.weight.dtype
        self.u = nn.Parameter(u.to(dt))
        self.s = nn.Parameter(s.to(dt))
        self.v = nn.Parameter(vh.to(dt))
        self.bias = None if m.bias is None else nn.Parameter(m.bias.detach().clone())
        self.shape = tuple(m.weight.shape)
        self.decomposition = decomposition
        self.conv = None if isinstance(m, nn.Linear) else \
            {"stride": m.stride, "padding": m.padding, "dilation": m.dilation}

    def weight(self) -> torch.Tensor:
        return matrix_to_weight((self.u * self.s) @ self.v, self.shape, self.decomposition)

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
                         epochs: int, decomposition: str = "channel", lr: float | None = None) -> None:
    for name in names:
        replace(model, name, SVDParametrised(model.get_submodule(name), decomposition))
    svd_layers = [model.get_submodule(n) for n in names]

    def regularizer(_: nn.Module) -> torch.Tensor:
        ortho, l1 = zip(*(layer.penalties() for layer in svd_layers))
        return orthogonal_reg * torch.stack(ortho).sum() + sv_sparsity * torch.stack(l1).sum()

    try:
        # keep the last epoch: the most accurate one is the least regularised, and the spectrum cut
        # below relies on what the penalty did
        ctx.finetune(model, epochs=epochs, lr=lr, phase="lowrank-regularised", regularizer=regularizer,
                     keep_best=False)
    finally:  # back to plain layers whatever happened, so the model stays exportable
        for name, layer in zip(names, svd_layers):
            replace(model, name, layer.to_plain())


# --------------------------------------------------------------------------------------------
# No silent no-ops
# --------------------------------------------------------------------------------------------
def saved_share(model: nn.Module, input_shape: tuple[int, ...], plan: dict[str, dict[str, Any]]) -> float:
    total = measure.count_macs(model, input_shape)["macs"]
    return sum(p["macs_before"] - p["macs_after"] for p in plan.values()) / max(1, total)


def require_saving(model: nn.Module, input_shape: tuple[int, ...], energy: float | None, ratio: float | None,
                   plan: dict[str, dict[str, Any]], when: str = "", decomposition: str = "channel",
                   route: str = "one_shot") -> None:
    """Refuse a truncation that saves under MIN_MAC_SAVING of the model's MACs (energy 0.9 one-shot
    saved 0-9 % on every architecture tried, the same bar as factorize's): the field named, what it
    would change, what to set instead."""
    share = saved_share(model, input_shape, plan)
    if share >= MIN_MAC_SAVING:
        return
    field, value = ("rank_ratio", ratio) if ratio is not None else ("energy", energy)
    alt = saved_share(model, input_shape, plan_ranks(model, input_shape, None, 0.25, decomposition))
    # After TRP's own training, suggesting route trp would send the user round in a circle.
    other = {"trp": "more reg_epochs or a stronger nuclear_reg, so TRP lowers the ranks further",
             "svd_reg": "a stronger sv_sparsity, or route trp, which lowers the ranks while it trains"}.get(
        route, "route trp, which lowers the ranks while it trains")
    raise SpecError(f"method.params.{field}", f"{field} {value:g} would decompose {len(plan)} layer(s) "
                    f"({decomposition}) and remove {share:.1%} of the MACs{when} (under {MIN_MAC_SAVING:.0%}: "
                    f"the model would come back almost unchanged); keep fewer singular values, e.g. rank_ratio "
                    f"0.25 ({alt:.0%} of the MACs), a lower energy, or {other}")


def _check(params: dict, spec: Any) -> None:
    if params["energy"] is not None and params["rank_ratio"] is not None:
        raise SpecError("method.params.rank_ratio", "give either energy or rank_ratio, not both")
    if params["route"] != "one_shot" and params["reg_epochs"] < 1:
        raise SpecError("method.params.reg_epochs", f"route {params['route']} trains before the cut: "
                                                    "reg_epochs must be >= 1 (or route one_shot)")
    if params["target_macs"] is not None and (params["route"] != "trp" or params["rank_ratio"] is not None):
        raise SpecError("method.params.target_macs", "target_macs sets where TRP's falling ranks stop: route trp "
                                                     "at an energy share only (not with rank_ratio, not "
                                                     f"route {params['route']})")
    if params["route"] == "svd_reg" and params["orthogonal_reg"] == 0 and params["sv_sparsity"] == 0:
        raise SpecError("method.params.sv_sparsity", "route svd_reg with orthogonal_reg 0 and sv_sparsity 0 "
                                                     "trains without its penalties and lowers no rank")


DEFAULT_ENERGY = 0.9


@register("lowrank_svd", family="low-rank", check=_check, params=[
    Param("route", "str", "trp", "trp: Xu et al. 2020, nuclear-norm training with the weights truncated every "
          "trp_interval steps, then the cut; svd_reg: Yang et al. 2020, training as U diag(s) V with "
          "orthogonality + singular-value L1 penalties, then the cut; one_shot: truncated SVD of the weights "
          "as they are. Each route is fine-tuned after the cut", choices=ROUTES),
    Param("decomposition", "str", "channel", "channel: k x k conv -> k x k (r filters) + 1 x 1 (Zhang et al. "
          "2016), linears -> two linears; spatial: k x k -> k x 1 (r filters) + 1 x k (Jaderberg et al. 2014), "
          "convs with k > 1 only", choices=DECOMPOSITIONS),
    Param("energy", "float", None, f"share of the squared singular values each layer keeps, at the cut and at "
          f"every TRP truncation (default {DEFAULT_ENERGY} when rank_ratio is not given)", low=0.0, high=1.0,
          low_open=True, optional=True),
    Param("rank_ratio", "float", None, "keep this share of each layer's full rank instead of an energy share",
          low=0.0, high=1.0, low_open=True, optional=True),
    Param("reg_epochs", "int", 2, "trp / svd_reg: training epochs before the cut", low=0, high=1000),
    Param("reg_lr", "float", None, "trp / svd_reg: learning rate of the training before the cut (default: "
          "finetune_lr; Xu et al. 2020 train TRP at the normal schedule's rate)", low=0, high=10, low_open=True,
          optional=True),
    Param("nuclear_reg", "float", 3e-4, "trp: weight of the nuclear norm (sum of singular values) of every "
          "layer's matrix in the loss (3e-4: Xu et al. 2020's CIFAR-10 ResNet-20 setting); 0 = truncation only",
          low=0.0, high=1.0),
    Param("trp_interval", "int", 20, "trp: optimiser steps between truncations (Xu et al. 2020's period m)",
          low=1, high=100000),
    Param("target_macs", "float", None, "trp: share of the model's MACs the cut keeps, e.g. 0.35 for ~2.9x "
          "fewer: the ranks fall with each truncation at energy until the cut would reach it, then hold there "
          "(a rank floor) for the rest of the training and the cut; unset: they fall as far as energy takes them",
          low=0.0, high=1.0, low_open=True, high_open=True, optional=True),
    Param("orthogonal_reg", "float", 1e-2, "svd_reg: weight of the orthogonality penalty on U and V",
          low=0.0, high=100.0),
    Param("sv_sparsity", "float", 0.3, "svd_reg: weight of the L1 penalty on the singular values", low=0.0,
          high=1.0),
    *recovery.params(epochs=1),
], help="Low-rank factorisation by truncated SVD: each conv becomes two thinner ones (channel: k x k + 1 x 1; "
        "spatial: k x 1 + 1 x k), a linear two linears, where that saves MACs. Default route: Trained Rank "
        "Pruning (Xu et al. 2020: nuclear weight 3e-4, period 20, trained at the normal rate), nuclear-norm "
        "training that truncates the weights every trp_interval steps (their ranks held once the cut reaches "
        "target_macs, if set), then the cut at those ranks or energy 0.9 and a fine-tune; svd_reg trains with Yang et al. 2020's orthogonality + "
        "singular-value sparsity penalties instead; one_shot cuts the weights as they are. A cut that would "
        "remove under 5 % of the MACs is refused.")
def lowrank_svd(model, ctx, params):
    energy, ratio, route, dec = params["energy"], params["rank_ratio"], params["route"], params["decomposition"]
    if energy is None and ratio is None:
        energy = DEFAULT_ENERGY
    model.to("cpu")
    names = [n for n, m in model.named_modules() if eligible(m, dec)]
    if not names:
        raise SpecError("method.params.decomposition", f"{ctx.arch} has no layer the {dec} decomposition applies "
                                                       "to (spatial: k x k convolutions with groups=1)")
    before = plan_ranks(model, ctx.input_shape, energy, ratio, dec)
    share_before = rank_share(model, names, energy, ratio, dec)
    # One-shot, or fixed shares of the rank: the cut is known now, so a no-op is refused before any
    # training. At an energy share the trained routes reshape the spectra first: it is judged after.
    if route == "one_shot" or ratio is not None:
        require_saving(model, ctx.input_shape, energy, ratio, before, decomposition=dec)
    else:
        ctx.log.info("low-rank: energy %g on the starting weights would remove %.1f%% of the MACs; %s training "
                     "follows", energy, 100 * saved_share(model, ctx.input_shape, before), route)
    recover = recovery.Recovery(ctx, params)   # its teacher, if any, is the start: loaded before training
    reg_lr = params["reg_lr"] if params["reg_lr"] is not None else params["finetune_lr"]
    floor = None
    if route == "trp":
        if params["target_macs"] is not None:
            floor = RankFloor(model, ctx.input_shape, names, dec, params["target_macs"])
        shares = trp_training(model, ctx, names, dec, energy, ratio, params["nuclear_reg"], params["trp_interval"],
                              params["reg_epochs"], reg_lr, floor)
        ctx.extra["trp_rank_share"] = shares
    elif route == "svd_reg":
        regularised_training(model, ctx, names, params["orthogonal_reg"], params["sv_sparsity"],
                             params["reg_epochs"], dec, reg_lr)
    model.to("cpu")
    held = floor.held if floor else None
    if floor:
        ctx.extra["lowrank_target_reached"] = held is not None
        if held is None:
            ctx.log.warning("low-rank: TRP's ranks did not fall to target_macs %g during training; the cut is at "
                            "energy %g", params["target_macs"], energy)
    plan = plan_ranks(model, ctx.input_shape, energy, ratio, dec, held)
    share_after = rank_share(model, names, energy, ratio, dec)
    if route != "one_shot":
        require_saving(model, ctx.input_shape, energy, ratio, plan, f" after {route} training", dec, route)
    apply_plan(model, plan)
    ctx.log.info("low-rank (%s, %s): %d layers decomposed", route, dec, len(plan))
    ctx.recalibrate(model, "truncation")
    ctx.extra["lowrank_route"] = route
    ctx.extra["lowrank_decomposition"] = dec
    # mean rank / full rank over every eligible layer at the cut's energy: before and after training
    ctx.extra["lowrank_rank_share_before"] = share_before
    ctx.extra["lowrank_rank_share"] = share_after
    ctx.extra["lowrank_layers"] = plan
    ctx.extra["lowrank_params_saved"] = sum(p["params_before"] - p["params_after"] for p in plan.values())
    ctx.extra["lowrank_macs_saved"] = sum(p["macs_before"] - p["macs_after"] for p in plan.values())
    if plan:
        recover(model)
    return model

