"""Multi-process training of one job (``train.devices > 1``): DistributedDataParallel.

``Context.fit`` calls :func:`fit` instead of ``training.fit`` when ``train.devices > 1``: the job's
process becomes rank 0 and keeps the progress sink, the cancel check and the model object the method
goes on with. Ranks 1..N-1 live for one ``fit`` call and get the model, the data and the method's
hooks by pickle (cloudpickle for closures such as a distillation loss). They join a process group
over TCP on 127.0.0.1 (gloo on CPU, nccl on CUDA with rank r on the r-th GPU), each train on its slice
of every global batch (``engine.ddp``: the ranks together take one device's steps) and exit; DDP keeps
the weights identical and BatchNorm statistics are synchronised or averaged, so rank 0's model is the
one kept, and only rank 0 reports and writes.

Why spawn and not fork: a forked rank hangs in its first multi-threaded op once the parent has used
OpenMP threads (GNU libgomp is not fork-safe; reproduced here with 2 threads per rank), and CUDA
cannot be used in a child forked after the parent touched it. Spawning costs a few seconds of
imports per rank per fit, which is small next to the training it parallelises. The primitives the
training loop itself uses (wrapping, sharding) live in ``engine.ddp``; this module is the launcher.
"""
from __future__ import annotations

import multiprocessing as mp
import pickle
import socket
import time
import traceback
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from . import ddp, training
from .errors import Cancelled
from .procs import die_with_parent

RANK_TIMEOUT_S = 600  # a collective waiting this long means a rank is gone: fail instead of hanging


# -- launching -------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dumps(obj: Any) -> bytes:
    try:
        import cloudpickle  # closures and lambdas (method hooks) need it; plain pickle covers the rest
        return cloudpickle.dumps(obj)
    except ImportError:
        return pickle.dumps(obj)


def _init(rank: int, world: int, port: int, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world, timeout=timedelta(seconds=RANK_TIMEOUT_S))


def _rank_main(rank: int, world: int, port: int, payload: bytes, threads: int, errors, ready) -> None:
    """Ranks 1..N-1 (spawned): rebuild the fit call, join the group, train in lock-step, leave."""
    try:
        die_with_parent(mp.parent_process().pid)
        torch.set_num_threads(threads)
        job = pickle.loads(payload)
        device = job["device"]
        if device.type == "cuda":
            device = torch.device("cuda", device.index + rank)
        ready.put(rank)
        _init(rank, world, port, device)
        ddp.reset_image_counts()
        training.fit(job["model"], job["data"], job["cfg"], **job["kwargs"], device=device,
                     progress=training._noop, cancelled=lambda: False)
        ddp.gather_image_counts(device)
    except BaseException:
        errors.put(f"rank {rank}: {traceback.format_exc()}")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _wait_ready(procs, ready, errors, cancelled) -> None:
    """Until every rank has started: one that dies on the way fails the job now, not at a timeout."""
    started = 0
    while started < len(procs):
        while not ready.empty():
            ready.get()
            started += 1
        dead = [p for p in procs if p.exitcode is not None]
        if dead and started < len(procs):
            raise RuntimeError(f"DDP: {dead[0].name} failed to start: {_last_error(errors, dead[0])}")
        if cancelled():
            raise Cancelled()
        time.sleep(0.05)


def _payload(model: nn.Module, data, cfg, device: torch.device, kw: dict[str, Any]) -> bytes:
    """The fit call for the other ranks: the model and the method's hooks in one pickle, so that a
    hook's modules (slimming's BN costs, low-rank's layers, soft pruning's groups) are those of the
    model that rank trains. (A copy of the model pickled apart from them gave each rank hooks on a
    model nobody trained: penalties divided by the world size, soft-pruned ranks drifting apart.)"""
    where = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.cpu()
    try:
        return _dumps({"model": model, "data": data, "cfg": cfg, "device": device, "kwargs": kw})
    finally:
        model.to(where)


def _last_error(errors, proc) -> str:
    return errors.get().strip().splitlines()[-1] if not errors.empty() else f"exit code {proc.exitcode}"


def fit(model: nn.Module, data, cfg, *, device: torch.device, progress, cancelled, **kw: Any):
    """Train ``model`` on ``cfg.devices`` processes; returns rank 0's FitResult with each history entry
    annotated with ``world_size``, ``backend`` and ``rank_images`` (images each rank trained on)."""
    world = cfg.devices
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "cuda" and torch.cuda.device_count() < device.index + world:
        raise RuntimeError(f"train.devices is {world} but only {torch.cuda.device_count() - device.index} CUDA "
                           f"device(s) are visible from {device}")
    payload = _payload(model, data, cfg, device, kw)
    threads = max(1, torch.get_num_threads() // world)  # the ranks share this job's CPU threads
    port = _free_port()
    ctx = mp.get_context("spawn")
    errors, ready = ctx.SimpleQueue(), ctx.SimpleQueue()
    others = [ctx.Process(target=_rank_main, args=(r, world, port, payload, threads, errors, ready), daemon=True,
                          name=f"slimbench-rank{r}") for r in range(1, world)]
    for p in others:
        p.start()
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _wait_ready(others, ready, errors, cancelled)
        _init(0, world, port, device)
        ddp.reset_image_counts()
        result = training.fit(model, data, cfg, device=device, progress=progress, cancelled=cancelled, **kw)
        counts = ddp.gather_image_counts(device)
        for p in others:
            p.join(RANK_TIMEOUT_S)
        failed = [p for p in others if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"DDP: {failed[0].name} failed: {_last_error(errors, failed[0])}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for p in others:  # after a cancel or an error the others wait in a collective: stop them
            if p.is_alive():
                p.kill()
                p.join()
        torch.set_num_threads(saved_threads)
    for epoch, h in enumerate(result.history):
        h.update(world_size=world, backend="nccl" if device.type == "cuda" else "gloo",
                 rank_images=[c[epoch] for c in counts])
    return result
