"""TRP's target_macs: the falling ranks stop where the cut keeps the set share of the MACs (a rank floor)."""
from __future__ import annotations

import copy

import pytest
import torch

from engine import data as D, measure, models
from engine.context import Context
from engine.errors import SpecError
from engine.methods import validate
from engine.methods.lowrank import lowrank_svd
from engine.spec import DataSpec, JobSpec

DIGITS = DataSpec(name="digits", limit=600, test_limit=200)


def context(model, tmp_path) -> Context:
    spec = JobSpec.from_dict({"data": {"name": "digits", "limit": 600, "test_limit": 200},
                              "model": {"arch": "resnet20"}, "method": {"name": "baseline"},
                              "train": {"epochs": 1, "bn_recalibration_images": 128}})
    return Context(spec=spec, data=D.load(DIGITS), device=torch.device("cpu"), store=None, run_id="test",
                   run_dir=tmp_path, arch="resnet20", small_input=True, load_run=None, run_child=None,
                   base=copy.deepcopy(model).eval())


def trp(tmp_path, **params) -> tuple[float, dict]:
    torch.manual_seed(0)
    net = models.build("resnet20", 10, small_input=True, width=0.25)
    ctx = context(net, tmp_path)
    macs = measure.count_macs(net, ctx.input_shape)["macs"]
    p = validate("lowrank_svd", {"route": "trp", "energy": 0.8, "reg_epochs": 1, "trp_interval": 1,
                                 "finetune_epochs": 0, **params})
    out = lowrank_svd(net, ctx, p)
    return measure.count_macs(out, ctx.input_shape)["macs"] / macs, ctx.extra


def test_target_macs_holds_the_ranks_at_the_target(tmp_path):
    free_kept, free = trp(tmp_path)
    assert free_kept < 0.6, "energy 0.8 at every step must fall well past the target on its own"
    kept, extra = trp(tmp_path, target_macs=0.7)
    assert extra["lowrank_target_reached"]
    assert 0.65 <= kept <= 0.7, kept          # reached, and the crossing step taken only part of the way
    shares = extra["trp_rank_share"]
    held = shares[-1]
    assert held > free["trp_rank_share"][-1]
    assert shares.index(held) < len(shares) - 1 and all(s == held for s in shares[shares.index(held):])


@pytest.mark.fast
def test_target_macs_needs_trp_at_an_energy():
    for params in ({"route": "one_shot", "target_macs": 0.4}, {"rank_ratio": 0.3, "target_macs": 0.4}):
        with pytest.raises(SpecError) as e:
            validate("lowrank_svd", params)
        assert e.value.field == "method.params.target_macs"
