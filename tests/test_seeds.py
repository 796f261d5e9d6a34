"""The two seeds: ``data.seed`` picks the validation split, ``train.seed`` everything random in training
(fresh weights, batch order, augmentation draws, dropout), so replicates over train seeds really vary."""
from __future__ import annotations

import pytest
import torch

from conftest import run_here
from engine import data as D
from engine import export, models
from engine.spec import DataSpec

QUICK = {"onnx": False, "deploy": False, "latency_runs": 2, "warmup_runs": 1, "batch_size": 2, "paired_rounds": 0}


@pytest.mark.fast
def test_order_seed_is_the_data_seed_at_train_seed_0_and_differs_for_every_other_pair():
    assert [D.order_seed(d, 0) for d in (0, 1, 7)] == [0, 1, 7]  # runs made before keep their order
    pairs = {(d, t): D.order_seed(d, t) for d in range(5) for t in range(5)}
    assert len(set(pairs.values())) == len(pairs)
    assert all(0 <= s < 2**32 for s in pairs.values())  # torch's CPU generator keeps 32 bits only
    assert 0 <= D.order_seed(2**32 - 1, 2**32 - 1) < 2**32


@pytest.mark.fast
def test_the_train_seed_changes_the_training_order_and_augmentation_not_evaluation():
    d = D.load(DataSpec(name="digits", limit=200, batch_size=32))
    first = lambda **kw: next(iter(d.loader("train", train=True, **kw)))  # noqa: E731
    x0, y0 = first()
    x1, y1 = first(train_seed=1)
    assert not torch.equal(y0, y1)                        # another batch order
    assert all(torch.equal(a, b) for a, b in zip(first(train_seed=1), (x1, y1)))   # reproducible
    assert torch.equal(first(train_seed=0)[0], x0)        # train seed 0: the data seed's order, as before
    # the same images in both orders, cropped and flipped by other draws
    n = len(d.train)
    l0, l1 = (d.loader("train", train=True, batch_size=n, train_seed=t) for t in (0, 1))
    assert not torch.equal(l0.draws(n)[0], l1.draws(n)[0])
    # evaluation: fixed order, no augmentation, whatever the seed
    assert torch.equal(next(iter(d.loader("val")))[1], d.val.y[:32])


@pytest.mark.fast
def test_the_data_seed_picks_the_validation_split():
    a, b, c = (D.load(DataSpec(name="digits", seed=s)) for s in (0, 1, 0))
    assert not torch.equal(a.val.x, b.val.x) and torch.equal(a.val.x, c.val.x) and torch.equal(a.val.y, c.val.y)
    assert torch.equal(a.test.x, b.test.x)  # the test split is the dataset's, not the seed's


def test_fine_tunes_of_one_start_vary_with_the_train_seed_and_repeat_with_the_same(tmp_path):
    """A ResNet (no dropout) fine-tuned from one checkpoint: before train.seed reached the loader, train
    seeds 0 and 1 gave the same weights, so replicates over train seeds had a spread of exactly zero."""
    torch.manual_seed(0)
    net = models.build("resnet8", 10, small_input=True)
    path = tmp_path / "start.pt"
    export.save_bundle(export.make_bundle(net, arch="resnet8", num_classes=10, small_input=True, meta={}), path)

    def tune(seed: int) -> tuple[dict, dict]:
        rec = run_here({"data": {"name": "digits", "limit": 160, "test_limit": 64, "batch_size": 32},
                        "model": {"checkpoint": str(path)}, "method": {"name": "baseline"},
                        "train": {"epochs": 1, "device": "cpu", "seed": seed}, "measure": QUICK}, tmp_path / "ws")
        return rec, export.load_model(rec["checkpoint"])[0].state_dict()

    (r0, w0), (r1, w1), (r1b, w1b) = tune(0), tune(1), tune(1)
    assert r1["spec"]["train"]["seed"] == 1 and r1["spec"]["data"]["seed"] == 0   # both recorded
    assert all(torch.equal(w1[k], w1b[k]) for k in w1)                          # same seed: same model
    loss = lambda r: [h["train_loss"] for h in r["history"]]  # noqa: E731
    assert loss(r1) == loss(r1b) and loss(r0) != loss(r1)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0 if w0[k].is_floating_point())
