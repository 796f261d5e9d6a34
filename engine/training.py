"""Fit and evaluate loops. Methods plug in through hooks instead of copying the loop:

- ``loss_fn(logits, y, x) -> loss``       replaces the criterion (e.g. distillation)
- ``regularizer(model) -> loss``         added to the loss each step (e.g. BN-scale L1, orthogonality)
- ``after_backward(model)``              runs between backward and the optimiser step, on unscaled
                                         gradients (e.g. torch-pruning's group-norm sparse learning)
- ``after_step(model)``                  runs after each optimiser step (e.g. re-apply masks)
- ``on_epoch_end(model, epoch)``         runs after each epoch, before validation (e.g. soft pruning)
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ddp, stats
from .devices import resolve_device
from .errors import Cancelled, SpecError
from .spec import TrainSpec

log = logging.getLogger("slimbench.train")  # the job log: one line per epoch

Progress = Callable[..., None]


@dataclass
class FitResult:
    best_val_acc: float
    best_epoch: int
    seconds: float
    history: list[dict]
    recipe: dict[str, Any] = field(default_factory=dict)  # the settings it trained with, resolved


def _noop(**_: Any) -> None:
    pass


# How the defaults were chosen (`python -m bench.recipe_sweep`, CPU, ResNet-20 from scratch; Fashion-MNIST:
# 2,000 images at 16 px, 5 epochs, 2 seeds, 2,000 test images; digits: 8 epochs, 5 seeds, 359 test images;
# the seeds then varied the fresh weights only, one batch order: train.seed reaches the order since b8a28a3):
# - lr, SGD 0.1 per 256 images (0.025 at batch 64): 73.8 % / 96.9 %; twice that 74.0 % / 97.1 %: kept.
# - label smoothing 0.1: 72.9 % / 96.8 %, no better; and a teacher trained with it distils worse (Müller
#   et al. 2019), which Slimbench's distillation would inherit: off by default.
# - zero-init of the residual blocks' last BN: 48.6 % / 73.0 % (every block starts as the identity and
#   its scale grows slowly at these short schedules): off by default, train.zero_init_residual offers it.
# - batch 128 at lr 0.1 on the CPU: 72.8 % / 96.5 %, epochs ~15 % faster: 64 kept (engine.data.assembly).
# - warm-up 0.2 / 0.5 / 1 epoch: within noise of each other (digits, 4 epochs): 0.5 kept.


# The recipe an architecture family trains with where the spec leaves the choice open (train.optimizer,
# weight_decay, label_smoothing unset); the warm-up + cosine schedule is every recipe's.
# - "default" (CNNs): SGD with Nesterov momentum, weight decay 5e-4, no label smoothing (above).
# - "vit": the recipe the small-ViT literature trains from scratch with: AdamW at 1e-3, decoupled weight
#   decay 0.05, label smoothing 0.1, warm-up then cosine (DeiT, Touvron et al. 2021; Lee et al. 2021,
#   "Vision Transformer for Small-Size Datasets"; the ViT-CIFAR recipes), with no weight decay on norms,
#   biases, position embeddings and the class token (DeiT's no_weight_decay). Its case rests on those
#   papers' 100-300 epoch schedules: on short CPU runs at batch 64 it did not beat SGD (vit_cifar, 1,500
#   images of cifar10-small, 600 test: 5 epochs 0.297 vs SGD 0.335, 15 epochs 0.337 vs 0.372, 95 % CIs
#   overlapping; digits at 32 px, 6 epochs: 0.440 vs 0.468). Not yet measured: full CIFAR-10 at the GPU
#   batch of 512, where SGD's linearly scaled lr is 0.2.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {"optimizer": "sgd", "weight_decay": 5e-4, "label_smoothing": 0.0},
    "vit": {"optimizer": "adamw", "weight_decay": 0.05, "label_smoothing": 0.1},
}
NO_DECAY_NAMES = ("pos_embedding", "pos_embed", "class_token", "cls_token")  # ViT tokens: never decayed


def family_of(model: nn.Module | None) -> str | None:
    """The recipe family of the model being trained: "vit" for a vision transformer (a head-pruned one
    included), None for any other (the default recipe). Read from the model itself, so that a student
    of another kind than its teacher trains under its own recipe."""
    from torchvision.models import VisionTransformer
    return "vit" if isinstance(model, VisionTransformer) else None


def resolved(cfg: TrainSpec, family: str | None = None) -> TrainSpec:
    """``cfg`` with what it leaves open filled in: from ``family``'s recipe where the optimizer is not
    given (a given optimizer keeps the default recipe's other values, as before recipes existed)."""
    if cfg.optimizer is not None and cfg.weight_decay is not None and cfg.label_smoothing is not None:
        return cfg
    fill = {k: v for k, v in RECIPES[recipe_name(cfg, family)].items() if getattr(cfg, k) is None}
    return dataclasses.replace(cfg, **fill)


def recipe_name(cfg: TrainSpec, family: str | None) -> str:
    """Which recipe ``resolved(cfg, family)`` takes its open choices from."""
    return family if cfg.optimizer is None and family in RECIPES else "default"


def default_lr(cfg: TrainSpec, batch_size: int, family: str | None = None) -> float:
    """The spec's lr, else the linear scaling rule: SGD 0.1 per 256 images, AdamW 1e-3."""
    if cfg.lr is not None:
        return cfg.lr
    return 0.1 * batch_size / 256 if resolved(cfg, family).optimizer == "sgd" else 1e-3


def amp_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device``; None: full FP32.

    ``auto``: bfloat16 on CUDA that has it (else float16), float32 on a CPU. ``bf16`` on a CPU is an
    opt-in: on a 2-core AVX-512 BF16 EPYC it trained the Quick tour's ResNet-20 base 1.27x faster (with
    channels_last; ResNet-18 steps 2.07x, MobileNets 0.89-1.06x, a ViT 1.01x), but the base scored lower on
    the test set: 0.8837 against 0.8866 on average over 4 runs each, -0.26 and -0.29 pt at the same seed
    (docs/BENCHMARKS.md, investigations): accuracy first by default.
    Weights, optimizer state and evaluation stay float32 either way."""
    if amp == "off":
        return None
    if device.type != "cuda":
        return torch.bfloat16 if amp == "bf16" else None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def autocast_for(device: torch.device, dtype: torch.dtype | None):
    """The autocast context of ``dtype`` (``amp_dtype``'s) and the loss scaler float16 needs."""
    if dtype is None:
        return nullcontext(), None
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast(device.type, dtype=dtype), scaler


def channels_last_for(cfg: TrainSpec, device: torch.device) -> bool:
    """``train.channels_last``, else on for CUDA and for a CPU training in bfloat16 (with it ResNet-20's
    bfloat16 step went from 1.35x to 1.58x float32's speed on an AVX-512 BF16 EPYC)."""
    if cfg.channels_last is not None:
        return cfg.channels_last
    return device.type == "cuda" or (device.type == "cpu" and amp_dtype(device, cfg.amp) == torch.bfloat16)


def recipe(cfg: TrainSpec, data, device: torch.device, *, epochs: int | None = None,
           lr: float | None = None, family: str | None = None) -> dict[str, Any]:
    """Every choice ``fit`` makes, resolved from the spec, the data and the device: what the run records
    and its model card shows, so that a result can be reproduced and set beside a published one."""
    defaults = recipe_name(cfg, family)
    cfg = resolved(cfg, family)
    world = cfg.devices
    aug = "off"
    if data.augment:
        aug = f"random crop (zero pad {max(1, data.image_size // 8)} px)" + (" + horizontal flip" if data.flip else "")
    dtype = amp_dtype(device, cfg.amp)
    return {
        "optimizer": "sgd nesterov" if cfg.optimizer == "sgd" and cfg.momentum > 0 else cfg.optimizer,
        "momentum": cfg.momentum if cfg.optimizer == "sgd" else None,
        "lr": lr if lr is not None else default_lr(cfg, data.batch_size),
        "batch_size": data.batch_size,
        "batch_per_device": -(-data.batch_size // world),
        "schedule": "linear warm-up, then cosine to 0 (per step)",
        "warmup_epochs": cfg.warmup_epochs,
        "epochs": cfg.epochs if epochs is None else epochs,
        "weight_decay": cfg.weight_decay,
        "weight_decay_on": "conv/linear weights (none on norms, biases, position embeddings, class tokens)",
        "label_smoothing": cfg.label_smoothing,
        "augmentation": aug,
        "amp": str(dtype).replace("torch.", "") if dtype is not None else "off (fp32)",
        "channels_last": channels_last_for(cfg, device),
        "compile": cfg.compile,
        "device": str(device),
        "devices": world,
        "sync_bn": resolve_sync_bn(cfg) if world > 1 else None,
        "defaults": f"{defaults} recipe (training.RECIPES)",  # where the choices the spec left open came from
    }


def resolve_sync_bn(cfg: TrainSpec) -> bool:
    return cfg.sync_bn if cfg.sync_bn is not None else cfg.devices > 1




def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The optimiser's two groups: decayed (conv / linear weights) and not (norms and biases, 1-D, and a
    ViT's position embedding and class token: decaying them pulls every token towards zero)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    skip = {n for n, p in params if p.ndim <= 1 or n.rsplit(".", 1)[-1] in NO_DECAY_NAMES}
    return [{"params": [p for n, p in params if n not in skip], "weight_decay": weight_decay},
            {"params": [p for n, p in params if n in skip], "weight_decay": 0.0}]


def fit(model: nn.Module, data, cfg: TrainSpec, *, epochs: int | None = None, lr: float | None = None,
        device: torch.device | None = None, progress: Progress = _noop,
        cancelled: Callable[[], bool] = lambda: False, phase: str = "train",
        loss_fn: Callable[..., torch.Tensor] | None = None,
        regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
        after_step: Callable[[nn.Module], None] | None = None,
        after_backward: Callable[[nn.Module], None] | None = None,
        on_epoch_end: Callable[[nn.Module, int], None] | None = None,
        keep_best: bool = True, amp: str | None = None) -> FitResult:
    """Train ``model`` in place; afterwards it holds the weights of the best validation epoch.

    One process; inside a DDP process group (``engine.distributed`` sets it up) each rank trains on its
    slice of every global batch (``engine.ddp``), so N ranks take the steps one device would. Training on ``cfg.devices > 1`` processes is the caller's choice: ``Context.fit`` makes it."""
    device = device or resolve_device(cfg.device)
    if amp is not None:  # a method that must train in float32 (QAT simulates INT8 arithmetic)
        cfg = dataclasses.replace(cfg, amp=amp)
    family = family_of(model)
    used = recipe(cfg, data, device, epochs=epochs, lr=lr, family=family)
    cfg = resolved(cfg, family)  # what the spec leaves open, from the model's recipe (a ViT's: AdamW)
    epochs = cfg.epochs if epochs is None else epochs
    torch.manual_seed(cfg.seed)
    model.to(device)
    if epochs <= 0:  # before the memory-format switch, which only a finished training undoes: a model
        return FitResult(float("nan"), -1, 0.0, [])  # left channels_last was timed unlike its base
    channels_last = used["channels_last"]
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if len(data.train) < 2:  # batches of one are skipped (BatchNorm cannot train on one image)
        raise SpecError("data.limit", f"{len(data.train)} training image(s) left after the validation split; "
                                      "training needs at least 2: raise data.limit or lower data.val_fraction")

    groups = param_groups(model, cfg.weight_decay)
    base_lr = used["lr"]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=base_lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    else:
        opt = torch.optim.AdamW(groups, lr=base_lr)
    # train.seed drives the batch order and augmentation draws (mixed with data.seed), as it does the global
    # RNG above (fresh weights, dropout); every rank draws the same order, then takes its slice of each batch.
    train_loader = ddp.shard(data.loader("train", device, train=True, train_seed=cfg.seed))
    net = ddp.wrap(model, device)  # forward/backward through DDP when distributed
    if cfg.compile:  # compiled once per fit: a pruned model has new shapes, so each fine-tune compiles again
        net = torch.compile(net)
    with ddp.sync_batchnorm(model, device, used["sync_bn"]):
        steps_per_epoch = max(1, len(train_loader))
        total = epochs * steps_per_epoch
        warmup = int(cfg.warmup_epochs * steps_per_epoch)

        def lr_at(step: int) -> float:  # linear warm-up, then cosine to zero
            if step < warmup:
                return (step + 1) / warmup
            t = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        amp_ctx, scaler = autocast_for(device, amp_dtype(device, cfg.amp))
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        best_acc, best_epoch, best_state = -1.0, -1, None
        history: list[dict] = []
        start = time.perf_counter()
        step = 0
        for epoch in range(epochs):
            net.train()
            # Loss and hits accumulate on the device and are read only when reported: a .item() per step
            # would make the host wait for the GPU every step instead of queueing the next one.
            seen, t0 = 0, time.perf_counter()
            loss_sum = correct = torch.zeros((), device=device)
            for i, (x, y) in enumerate(train_loader):
                if cancelled():
                    raise Cancelled()
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with amp_ctx:
                    logits = net(x)
                    loss = loss_fn(logits, y, x) if loss_fn else criterion(logits, y)
                if regularizer is not None:  # on the float32 weights, outside autocast: products of weights
                    loss = loss + regularizer(model)  # (TRP's W Wᵀ, norms) would lose precision in 16 bits
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    if after_backward is not None:
                        scaler.unscale_(opt)  # the hook adds to true gradients, not loss-scaled ones
                        after_backward(model)
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    if after_backward is not None:
                        after_backward(model)
                    opt.step()
                sched.step()
                step += 1
                if after_step is not None:
                    after_step(model)
                n = len(y)
                seen += n
                loss_sum = loss_sum + loss.detach().float() * n
                correct = correct + (logits.argmax(1) == y).sum()
                if i % 10 == 0 or i == steps_per_epoch - 1:
                    mean_loss = loss_sum.item() / seen
                    if not math.isfinite(mean_loss):
                        raise FloatingPointError(f"loss became {mean_loss} by epoch {epoch + 1} step {i + 1}; "
                                                 "lower the learning rate")
                    ips = seen / max(1e-9, time.perf_counter() - t0)
                    elapsed = time.perf_counter() - start
                    progress(phase=phase, epoch=epoch + 1, epochs=epochs, step=i + 1, steps=steps_per_epoch,
                             images=seen, loss=mean_loss, acc=correct.item() / seen, images_per_s=ips,
                             eta_s=elapsed / step * (total - step))
            if on_epoch_end is not None:
                on_epoch_end(model, epoch)
            ddp.average_buffers(model)  # BatchNorm statistics of all ranks' images, not rank 0's alone
            val = evaluate(model, data, "val", device, cancelled=cancelled)
            rec = {"epoch": epoch + 1, "train_loss": loss_sum.item() / max(1, seen),
                   "train_acc": correct.item() / max(1, seen),
                   "val_acc": val["accuracy"], "val_loss": val["loss"], "seconds": time.perf_counter() - start}
            history.append(rec)
            log.info("%s epoch %d/%d: train loss %.4f, train acc %.4f, val loss %.4f, val acc %.4f, %.1f s",
                     phase, epoch + 1, epochs, rec["train_loss"], rec["train_acc"], rec["val_loss"], rec["val_acc"],
                     time.perf_counter() - t0)
            progress(phase=f"{phase}:val", epoch=epoch + 1, epochs=epochs, loss=val["loss"], acc=val["accuracy"],
                     val_acc=val["accuracy"], train_acc=rec["train_acc"])
            if val["accuracy"] > best_acc:
                best_acc, best_epoch = val["accuracy"], epoch + 1
                if keep_best and epoch < epochs - 1:
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    best_state = None  # the current weights are the best
        if keep_best and best_state is not None:
            model.load_state_dict(best_state)
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        return FitResult(best_acc, best_epoch, time.perf_counter() - start, history, used)


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch norms that keep running statistics (the ones evaluation depends on)."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data, images: int, device: torch.device | None = None,
                   cancelled: Callable[[], bool] = lambda: False) -> int:
    """Re-estimate every batch norm's running mean and variance on the first ``images`` training
    images; returns how many were used (0: ``images`` is 0 or the model has no batch norm).

    A cut (channels removed, ranks truncated, weights zeroed) changes what every later layer sees,
    and the running statistics left from before describe a network that no longer exists: a
    ResNet-18 on digits cut 30 % scored at chance with them and near its base with re-estimated
    ones. The statistics are reset and averaged with equal weight per batch (momentum None), with
    only the batch norms in train mode (dropout stays off) and no gradients. The images are
    augmented as in training (seeded: the same model gets the same statistics every time): the
    layers after each batch norm learnt on features normalised by training-time statistics, and on
    that digits base 512 augmented images gave the uncut model back its test accuracy (0.967) where
    unaugmented ones cost it 2.8 points, and a 30 % cut 0.827 against 0.794. Modes and momenta are
    restored afterwards."""
    bns = batch_norms(model)
    if images <= 0 or not bns:
        return 0
    if device is None:
        device = next(model.parameters()).device
    model.to(device)
    modes = [(m, m.training) for m in model.modules()]
    momenta = [bn.momentum for bn in bns]
    before = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    seen = 0
    try:
        for x, _ in data.loader("train", device, train=True, limit=images):
            if cancelled():
                raise Cancelled()
            model(x)
            seen += len(x)
        if not seen:  # no batch of two or more: keep the old statistics rather than the reset ones
            for bn, (mean, var, count) in zip(bns, before):
                bn.running_mean.copy_(mean), bn.running_var.copy_(var), bn.num_batches_tracked.copy_(count)
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        for m, was_training in modes:
            m.training = was_training
    return seen


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device | None = None,
            cancelled: Callable[[], bool] = lambda: False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels for a whole loader (model in eval mode, float32 logits on CPU)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    outs, ys = [], []
    for x, y in loader:
        if cancelled():
            raise Cancelled()
        outs.append(model(x.to(device)).float())  # stays on the device: no sync per batch
        ys.append(y)
    model.train(was_training)
    return torch.cat(outs).cpu(), torch.cat(ys).cpu()


def evaluate(model: nn.Module, data, split: str = "test", device: torch.device | None = None,
             full: bool = False, cancelled: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    logits, y = predict(model, data.loader(split, device), device, cancelled)
    return classification_metrics(logits, y, data.num_classes, full=full)


def classification_metrics(logits: torch.Tensor, y: torch.Tensor, num_classes: int,
                           full: bool = True) -> dict[str, Any]:
    """top-1, top-5, loss; with ``full``: macro one-vs-rest ROC AUC, per-class accuracy, confusion."""
    pred = logits.argmax(1)
    correct = int((pred == y).sum())
    out: dict[str, Any] = {
        "accuracy": correct / len(y),
        "accuracy_ci95": stats.wilson(correct, len(y)),
        # with 5 classes or fewer every label is in the top 5: 1.0 by construction, so none is recorded
        "top5": ((logits.topk(5, 1).indices == y[:, None]).any(1).double().mean().item()
                 if num_classes > 5 else None),
        "loss": F.cross_entropy(logits, y).item(),
        "n": int(len(y)),
    }
    if full:
        from sklearn.metrics import confusion_matrix, roc_auc_score
        probs = torch.softmax(logits, 1).numpy().astype(np.float64)
        labels = list(range(num_classes))
        present = sorted(set(y.tolist()))
        try:
            if len(present) < 2:  # one class in the test set: AUC is undefined (sklearn: a warning and NaN)
                out["roc_auc"] = None
            elif len(present) == num_classes:
                out["roc_auc"] = float(roc_auc_score(y.numpy(), probs, multi_class="ovr", average="macro",
                                                     labels=labels))
            else:  # some classes absent from this test set: AUC over the present ones
                out["roc_auc"] = float(np.mean([roc_auc_score(y.numpy() == c, probs[:, c]) for c in present]))
        except ValueError:
            out["roc_auc"] = None
        cm = confusion_matrix(y.numpy(), pred.numpy(), labels=labels)
        out["confusion"] = cm.tolist()
        with np.errstate(invalid="ignore", divide="ignore"):
            per = np.diag(cm) / cm.sum(1)
        out["per_class_accuracy"] = [None if np.isnan(v) else float(v) for v in per]
    return out


def against_start(logits: torch.Tensor, start_logits: torch.Tensor, y: torch.Tensor,
                  num_classes: int) -> dict[str, Any]:
    """This model beside the one it started from, on the same test images in the same job.

    Top-1 accuracy hides how many answers changed: a compressed model can lose 0.5 point while
    flipping several percent of its predictions (some right -> wrong, others wrong -> right).
    ``accuracy - start_accuracy == flips_to_right - flips_to_wrong`` exactly.
    """
    pred, start = logits.argmax(1), start_logits.argmax(1)
    right, start_right = pred == y, start == y
    per_class = [float(start_right[y == c].double().mean()) if (y == c).any() else None for c in range(num_classes)]
    to_wrong, to_right = int((start_right & ~right).sum()), int((~start_right & right).sum())
    diff = stats.paired_difference(to_right, to_wrong, len(y))
    return {"start_accuracy": start_right.double().mean().item(),
            "start_per_class_accuracy": per_class,
            "agreement": (pred == start).double().mean().item(),
            "flips_to_wrong": to_wrong / len(y),
            "flips_to_right": to_right / len(y),
            "delta_accuracy_ci95": diff["ci95"], "mcnemar_p": diff["p"]}
