"""Multi-process training of one job (train.devices > 1): DDP with gloo on CPU, 2 processes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine import data as data_mod
from engine.ddp import ShardedLoader
from engine.data import Split
from engine.spec import DataSpec
from engine.store import Store

from conftest import run_spec

MEASURE = {"onnx": False, "deploy": False, "latency_runs": 3, "warmup_runs": 1, "batch_size": 8}


@pytest.mark.fast
def test_the_ranks_split_each_of_one_devices_batches_between_them():
    """N ranks see exactly one device's epoch: each global batch (same images, same crops and flips)
    split into near-equal slices, one per rank, with the same number of steps on every rank."""
    data = data_mod.load(DataSpec(name="digits", limit=101, augment=True))
    n = len(data.train)
    ids = Split(data.train.x, torch.arange(n))  # labels replaced by image indices, to see who got what

    def loader():
        ld = data.loader("train", "cpu", train=True, batch_size=16, train_seed=3)  # as fit builds it on every rank
        ld.split = ids
        return ld
    single = list(loader())
    ranks = [list(ShardedLoader(loader(), rank, 2)) for rank in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == len(ShardedLoader(loader(), 0, 2))
    for (x, y), (x0, y0), (x1, y1) in zip(single, *ranks):
        assert torch.equal(torch.cat([y0, y1]), y) and abs(len(y0) - len(y1)) <= 1
        assert torch.equal(torch.cat([x0, x1]), x)  # the same augmentation draws as one device
    seen = [torch.cat([y for _, y in r]).tolist() for r in ranks]
    assert not set(seen[0]) & set(seen[1]) and len(seen[0]) + len(seen[1]) == sum(len(y) for _, y in single)


def _sync_bn_rank(rank: int, port: int, x: torch.Tensor, out) -> None:
    import torch.distributed as dist

    from engine import ddp
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        bn = torch.nn.BatchNorm2d(3)
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
        mine = x.chunk(2)[rank].clone().requires_grad_()
        with ddp.sync_batchnorm(bn, torch.device("cpu")):
            y = bn(mine)
            (y * torch.arange(y.numel()).view_as(y)).sum().backward()  # rank-dependent upstream gradient
        assert type(bn) is torch.nn.BatchNorm2d  # the kept module is plain BatchNorm again
        for p in bn.parameters():  # as DDP does: the ranks' parameter gradients averaged
            dist.all_reduce(p.grad)
        out.put((rank, *(t.detach().numpy().copy() for t in (y, mine.grad, bn.weight.grad / 2, bn.running_mean,
                                                               bn.running_var))))
    finally:
        dist.destroy_process_group()


@pytest.mark.fast
def test_cpu_sync_batchnorm_equals_batchnorm_over_the_whole_batch():
    """The gloo SyncBatchNorm (torch's is GPU-only) normalises 2 ranks' slices as one batch: outputs,
    input and parameter gradients and running statistics equal one BatchNorm over the concatenation."""
    import multiprocessing as mp

    from engine.distributed import _free_port
    x = torch.randn(10, 3, 4, 4) * 3 + 1
    ctx = mp.get_context("spawn")  # one process per rank: a process group is per process
    port, queue = _free_port(), ctx.Queue()
    procs = [ctx.Process(target=_sync_bn_rank, args=(r, port, x, queue), daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    out = {}
    for _ in procs:
        rank, *got = queue.get(timeout=120)
        out[rank] = [torch.from_numpy(a) for a in got]
    for p in procs:
        p.join(60)
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
    whole = x.clone().requires_grad_()
    y = bn(whole)
    halves = [torch.arange(y[:5].numel()).view_as(y[:5])] * 2
    (y * torch.cat(halves)).sum().backward()
    assert torch.allclose(torch.cat([out[0][0], out[1][0]]), y, atol=1e-5)
    assert torch.allclose(torch.cat([out[0][1], out[1][1]]), whole.grad, atol=1e-4)
    assert torch.allclose(out[0][2] * 2, bn.weight.grad, atol=1e-3)
    assert torch.allclose(out[0][3], bn.running_mean, atol=1e-6) and torch.allclose(out[0][4], bn.running_var)


def test_two_ranks_reach_the_accuracy_of_one_device():
    """The issue's case: a digits job on 2 ranks reached 87.5 % against 94.4 % on one device for the
    same epochs (each rank took a full batch, so an epoch had half the steps at the same LR). Now the
    ranks split each global batch, BatchNorm is synchronised, and 2 ranks train as one device does.

    Tolerance: the two accuracies' 95 % Wilson intervals on the 359 test images overlap (each is about
    ±2.5 pt wide there: differences inside it are test-set noise; the issue's 6.9 pt gap is not), and the
    gap is under 2 pt (the runs take the same steps on the same batches and differ only by float
    reduction order, so a larger gap would be a real difference)."""
    from engine import distributed, models, training
    from engine.spec import TrainSpec
    data = data_mod.load(DataSpec(name="digits"))
    acc = {}
    for devices in (1, 2):
        cfg = TrainSpec(epochs=6, device="cpu", devices=devices, amp="off")  # float32: only reduction order differs
        torch.manual_seed(0)
        model = models.build("resnet20", data.num_classes)
        fit = distributed.fit if devices > 1 else training.fit
        res = fit(model, data, cfg, device=torch.device("cpu"), progress=training._noop, cancelled=lambda: False)
        assert res.recipe["devices"] == devices and res.recipe["batch_size"] == data.batch_size
        acc[devices] = training.evaluate(model, data, "test", torch.device("cpu"))
    assert acc[1]["n"] == 359
    (lo1, hi1), (lo2, hi2) = acc[1]["accuracy_ci95"], acc[2]["accuracy_ci95"]
    assert lo2 <= hi1 and lo1 <= hi2, (acc[1]["accuracy"], acc[2]["accuracy"])
    assert abs(acc[1]["accuracy"] - acc[2]["accuracy"]) < 0.02, (acc[1]["accuracy"], acc[2]["accuracy"])
    assert acc[1]["accuracy"] > 0.85  # both trained, not both stuck


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
