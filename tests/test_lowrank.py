"""lowrank_svd building blocks: exact at full rank, and savings exactly as the chosen ranks predict."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from engine import measure, models
from engine.methods import lowrank as L


@pytest.mark.fast
def test_full_rank_factors_reproduce_conv_and_linear():
    torch.manual_seed(0)
    conv, lin = nn.Conv2d(5, 7, 3, 2, 1, bias=True), nn.Linear(12, 4)
    x, v = torch.randn(2, 5, 9, 9), torch.randn(3, 12)
    pair = L.decompose(conv, min(L.weight_matrix(conv).shape))
    assert [type(m) for m in pair] == [nn.Conv2d, nn.Conv2d] and pair[1].kernel_size == (1, 1)
    assert (pair(x) - conv(x)).abs().max() < 1e-5
    assert (L.decompose(lin, 4)(v) - lin(v)).abs().max() < 1e-5


def test_energy_one_keeps_the_outputs():
    torch.manual_seed(0)
    model = models.build("resnet18", 10, True).eval()
    x = torch.randn(4, 3, 8, 8)
    ref = model(x)
    L.apply_plan(model, L.plan_ranks(model, (3, 8, 8), energy=1.0, rank_ratio=None))
    assert (model(x) - ref).abs().max() < 1e-4


def test_rank_choice_follows_energy_and_ratio():
    s = torch.tensor([3.0, 2.0, 1.0, 0.5])  # energies 9, 4, 1, 0.25 of 14.25
    assert L.choose_rank(s, 0.6, None) == 1
    assert L.choose_rank(s, 0.9, None) == 2
    assert L.choose_rank(s, 1.0, None) == 4
    assert L.choose_rank(s, None, 0.5) == 2


@pytest.mark.fast
def test_params_and_macs_drop_exactly_as_the_ranks_predict():
    model = models.build("resnet18", 10, True).eval()
    params0, macs0 = measure.count_params(model), measure.count_macs(model, (3, 8, 8))["macs"]
    plan = L.plan_ranks(model, (3, 8, 8), energy=None, rank_ratio=0.25)
    assert plan and all(p["params_after"] < p["params_before"] for p in plan.values())
    L.apply_plan(model, plan)
    assert params0 - measure.count_params(model) == sum(p["params_before"] - p["params_after"] for p in plan.values())
    assert macs0 - measure.count_macs(model, (3, 8, 8))["macs"] == \
        sum(p["macs_before"] - p["macs_after"] for p in plan.values())
    for name, p in plan.items():
        first, second = model.get_submodule(name)
        assert (first.out_channels if isinstance(first, nn.Conv2d) else first.out_features) == p["rank"]


def test_svd_parametrised_layer_starts_equal_and_orthogonal():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 5, 5)
    layer = L.SVDParametrised(conv)
    assert (layer(x) - conv(x)).abs().max() < 1e-5
    ortho, l1 = layer.penalties()
    assert ortho < 1e-8 and torch.isclose(l1, torch.linalg.svdvals(L.weight_matrix(conv)).sum(), rtol=1e-4)
    assert (layer.to_plain()(x) - conv(x)).abs().max() < 1e-5


def test_regularised_training_hands_on_its_last_epoch_not_its_most_accurate():
    """The spectrum cut relies on what the penalty did; the most accurate epoch is the least regularised."""
    from types import SimpleNamespace

    from engine.methods.lowrank import regularised_training
    calls = []
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(4))
    model(torch.zeros(1, 3, 6, 6))
    ctx = SimpleNamespace(finetune=lambda m, **kw: calls.append(kw))
    regularised_training(model, ctx, ["0"], orthogonal_reg=0.01, sv_sparsity=1e-4, epochs=2)
    assert calls and calls[0]["keep_best"] is False and calls[0]["regularizer"](model) > 0
    assert isinstance(model[0], nn.Conv2d)  # plain layers again afterwards
