"""Multi-process training of one job (train.devices > 1): DDP with gloo on CPU, 2 processes."""
from __future__ import annotations

from pathlib import Path

import torch

from engine import data as data_mod
from engine.ddp import ShardedLoader
from engine.data import Split
from engine.spec import DataSpec
from engine.store import Store

from conftest import run_spec

MEASURE = {"onnx": False, "latency_runs": 5, "warmup_runs": 1}


def test_sharded_loader_splits_each_epoch_into_disjoint_equal_shards():
    data = data_mod.load(DataSpec(name="digits", limit=101, augment=False))
    n, world = len(data.train), 2
    ids = Split(data.train.x, torch.arange(n))  # labels replaced by image indices, to see who got what
    seen = []
    for rank in range(world):
        base = data.loader("train", "cpu", train=True, batch_size=16)
        base.split = ids
        loader = ShardedLoader(base, rank, world)
        batches = [y for _, y in loader]
        assert len(batches) == len(loader)
        seen.append(torch.cat(batches).tolist())
    # Equal shares (an unequal step count would leave one rank waiting in all-reduce) ...
    assert len(seen[0]) == len(seen[1]) == (n + 1) // 2
    # ... that together cover every image, overlapping only by the padding to equal length.
    assert set(seen[0]) | set(seen[1]) == set(range(n))
    assert len(set(seen[0]) & set(seen[1])) == len(seen[0]) * world - n


def test_two_process_gloo_training_records_both_ranks(home, tmp_path):
    spec = {"data": {"name": "digits", "limit": 200, "test_limit": 60}, "model": {"arch": "resnet18"},
            "method": {"name": "baseline"}, "train": {"epochs": 1, "devices": 2, "device": "cpu"},
            "measure": MEASURE}
    record = run_spec(spec, home, tmp_path)

    train = record["history"][0]
    assert train["world_size"] == 2 and train["backend"] == "gloo"
    # Both ranks trained, each on its half of the training images.
    per_rank = train["rank_images"]
    n_train = len(data_mod.load(DataSpec(**spec["data"])).train)
    assert len(per_rank) == 2 and per_rank[0] == per_rank[1] > 0
    assert abs(sum(per_rank) - n_train) <= 2  # padding to equal shards / a dropped batch of one

    # Only rank 0 wrote: one run in the store, its bundle on disk, loadable and scoring.
    rows = Store(home).list()
    assert [r["id"] for r in rows] == [record["run_id"]] and rows[0]["state"] == "done"
    assert Path(record["checkpoint"]).is_file()
    assert sorted(p.name for p in (home / "runs").iterdir()) == [record["run_id"]]
    assert 0.0 <= record["accuracy"] <= 1.0 and record["test_images"] == 60


def test_the_other_ranks_hooks_act_on_the_model_they_train():
    """A method's regulariser holds modules of the model; the other ranks must get it bound to their
    own copy of the model (a copy pickled apart from the hooks left them regularising a model nobody
    trained: penalties divided by the world size)."""
    import pickle

    from engine.distributed import _payload
    from engine.methods.pruning.slimming import MacWeightedL1, channel_costs
    from engine import models
    from engine.spec import TrainSpec
    model = models.build("resnet18", 10, small_input=True)
    reg = MacWeightedL1(channel_costs(model, (3, 16, 16)), 1e-4)
    job = pickle.loads(_payload(model, None, TrainSpec(), torch.device("cpu"), {"regularizer": reg}))
    theirs = set(map(id, job["model"].modules()))
    bns = list(job["kwargs"]["regularizer"].costs)
    assert bns and all(id(bn) in theirs for bn in bns)
    job["kwargs"]["regularizer"](job["model"]).backward()
    assert all(bn.weight.grad is not None for bn in bns)  # the penalty reaches the model this rank trains
