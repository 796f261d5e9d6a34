"""Knowledge distillation into a student architecture, and the same student trained plainly.

``distill`` trains a fresh ``student`` to match a teacher (the base run by default, or any run
id), ``compact`` trains the same student on labels only with the same epoch budget, so the
dashboard can show whether the teacher helped (the research found either can win).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import models, training
from ..spec import SpecError
from . import Param, register
from .attention import FeatureTap, at_loss, pair_stages

LOSSES = ("kd", "mse_softmax", "mse_ce", "at", "kd_at")
FEATURE_LOSSES = ("at", "kd_at")  # attention transfer: the logit term, plus beta/2 x the maps' distance


# --------------------------------------------------------------------------------------------
# Losses (student logits s, teacher logits t, labels y)
# --------------------------------------------------------------------------------------------
def kd_loss(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, T: float = 2.0, alpha: float = 0.7,
            smoothing: float = 0.0) -> torch.Tensor:
    """Hinton et al. 2015: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y).

    The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones.
    """
    soft = F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="batchmean", log_target=True)
    return alpha * T * T * soft + (1 - alpha) * F.cross_entropy(s, y, label_smoothing=smoothing)


def mse_softmax_loss(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, T: float = 2.0,
                     alpha: float = 0.7, smoothing: float = 0.0) -> torch.Tensor:
    """T^2 * squared distance between the softened class probabilities, summed over classes and
    averaged over images (labels unused). Summed, not averaged over classes as F.mse_loss would: that
    shrank the loss and its gradient by the class count (100x below KD's with 10 classes), so the
    student hardly learned; T^2 as in KD keeps the scale across temperatures."""
    return T * T * (F.softmax(s / T, 1) - F.softmax(t / T, 1)).pow(2).sum(1).mean()


def mse_ce_loss(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, T: float = 2.0, alpha: float = 0.7,
                smoothing: float = 0.0) -> torch.Tensor:
    """alpha * softmax MSE + (1 - alpha) * cross-entropy on the labels."""
    return alpha * mse_softmax_loss(s, t, y, T) + (1 - alpha) * F.cross_entropy(s, y, label_smoothing=smoothing)


def ce_loss(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, T: float = 2.0, alpha: float = 0.7,
            smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy on the labels only (attention transfer's logit term in the paper)."""
    return F.cross_entropy(s, y, label_smoothing=smoothing)


LOSS_FNS: dict[str, Callable[..., torch.Tensor]] = {"kd": kd_loss, "mse_softmax": mse_softmax_loss,
                                                    "mse_ce": mse_ce_loss, "at": ce_loss, "kd_at": kd_loss}


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------
def _student_params() -> list[Param]:
    return [
        Param("student", "str", "mobilenet_v2", "student architecture", choices=tuple(models.ARCHS)),
        Param("width", "float", 1.0, "channel-width multiplier of the student (MobileNet students; e.g. 0.5 "
              "halves every layer)", low=0.1, high=2.0),
        Param("epochs", "int", None, "training epochs for the student (default: train.epochs)", low=1, high=10000,
              optional=True),
    ]


def _check_student(params: dict, spec: Any) -> None:
    models.check_width(params["student"], params["width"], "method.params.width")


def _check_distill(params: dict, spec: Any) -> None:
    _check_student(params, spec)
    devices = getattr(getattr(spec, "train", None), "devices", 1) or 1
    if params["loss"] in FEATURE_LOSSES and devices > 1:
        # the feature taps live in this process; a DDP rank's pickled student would fill its own copy
        raise SpecError("method.params.loss", f"{params['loss']} reads the student's feature maps in this process "
                                              "and trains on one device: set train.devices to 1, or loss kd")


def build_student(ctx, params: dict[str, Any]) -> nn.Module:
    """A fresh student for the run's data, with the same input stem choice as the starting model."""
    student = models.build(params["student"], ctx.data.num_classes, ctx.small_input, params["width"])
    models.check_input_fits(student, params["student"], ctx.input_shape, "method.params.student")
    ctx.set_arch(params["student"], ctx.small_input)
    return student


class Renormalised(nn.Module):
    """A teacher fed this job's normalised batches as it was trained: x * std + mean undoes the job's
    normalisation, then the teacher's own applies."""

    def __init__(self, model: nn.Module, job: tuple[list, list], own: tuple[list, list]):
        super().__init__()
        self.model = model
        view = lambda v: torch.tensor([float(x) for x in v]).view(1, -1, 1, 1)  # noqa: E731
        (jm, js), (tm, ts) = [(view(m), view(sd)) for m, sd in (job, own)]
        self.register_buffer("scale", js / ts)      # x_t = x * js/ts + (jm - tm)/ts
        self.register_buffer("shift", (jm - tm) / ts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.scale + self.shift)


def load_teacher(ctx, run_id: str | None) -> nn.Module:
    if run_id is None:
        teacher = ctx.base_copy()  # the starting model: the job's data already takes its preprocessing
    else:
        teacher = _teacher_as_trained(ctx, run_id)
    teacher = teacher.to(ctx.device).eval()
    if training.channels_last_for(ctx.spec.train, ctx.device):  # batches arrive channels_last: match
        teacher.to(memory_format=torch.channels_last)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _teacher_as_trained(ctx, run_id: str, field: str = "method.params.teacher") -> nn.Module:
    """Another run's model as a teacher (or a control's compressed run, ``field`` naming the parameter):
    refused where its classes or input size differ from this job's (its soft targets would mean other
    things), re-normalised where its statistics differ."""
    teacher, bundle = ctx.load_run(run_id, field)
    meta, data = bundle.get("meta") or {}, ctx.data
    n = int(bundle["arch_kwargs"]["num_classes"])
    if n != data.num_classes:
        raise SpecError(field, f"run {run_id} predicts {n} classes but the data has {data.num_classes}")
    names = meta.get("class_names")
    if names and list(names) != list(data.class_names):
        raise SpecError(field, f"run {run_id} predicts the classes {list(names)[:8]} but the data's are "
                               f"{list(data.class_names)[:8]} (order matters)")
    size = meta.get("input_size")
    if size and list(size) != list(ctx.input_shape):
        raise SpecError(field, f"run {run_id} was trained on {size[-1]}x{size[-1]} images but this data gives "
                               f"{ctx.input_shape[-1]}x{ctx.input_shape[-1]}; set data.image_size to {size[-1]}")
    mean, std = meta.get("mean"), meta.get("std")
    if meta.get("normalisation") != "dataset" and mean and std and (list(mean), list(std)) != (data.mean, data.std):
        return Renormalised(teacher, (data.mean, data.std), (mean, std))
    return teacher


@register("distill", family="distillation", check=_check_distill, params=[
    *_student_params(),
    Param("teacher", "run", None, "run id of the teacher (default: the starting model, model.from_run)",
          optional=True),
    Param("loss", "str", "kd", "kd: Hinton soft targets + CE; mse_softmax: T² x squared distance of the softmax "
          "outputs (labels unused; its pull weakens with many classes, whose probabilities are small); "
          "mse_ce: softmax MSE + CE; at: attention transfer (Zagoruyko & Komodakis 2017), CE + beta/2 x the "
          "distance of the unit-norm attention maps (channel mean of squared activations) at each resolution "
          "student and teacher share, stage output paired with stage output; kd_at: kd + that term",
          choices=LOSSES),
    Param("T", "float", 2.0, "softmax temperature for kd and the MSE losses", low=0.0, high=100.0, low_open=True),
    Param("alpha", "float", 0.7, "weight of the teacher term; the label cross-entropy gets 1 - alpha",
          low=0.0, high=1.0),
    Param("beta", "float", 1000.0, "at / kd_at: weight of the attention-transfer term (the paper's 1000, for "
          "CIFAR's 32 px maps); each pair's term is a mean over its H x W positions, so small maps weigh more: on "
          "8 px digits 100 trained a better student than 1000", low=0.0, high=1e6),
], help="Train a fresh student architecture to match a teacher (the starting model or any run): Hinton et al. "
        "2015's soft targets (kd, T 2, alpha 0.7), or attention transfer (Zagoruyko & Komodakis 2017: at, "
        "beta 1000) on the stage outputs of equal resolution.")
def distill(model, ctx, params):
    teacher = load_teacher(ctx, params["teacher"])
    student = build_student(ctx, params)
    loss = LOSS_FNS[params["loss"]]
    T, alpha, beta = params["T"], params["alpha"], params["beta"]
    taps = None
    if params["loss"] in FEATURE_LOSSES:
        pairs = pair_stages(student, teacher, ctx.input_shape)
        ctx.extra["attention_pairs"] = [f"{s} <- {t}" for s, t in pairs]
        taps = FeatureTap(student, [s for s, _ in pairs]), FeatureTap(teacher, [t for _, t in pairs])

    def loss_fn(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = teacher(x).float()
        # the label term smooths as plain training does, so distill vs compact compares the teacher only
        out = loss(logits.float(), t, y, T, alpha, training.resolved(ctx.spec.train, training.family_of(student)).label_smoothing)
        if taps is not None:  # the student's maps are from this very forward pass, the teacher's from above
            out = out + at_loss(taps[0].maps(), taps[1].maps(), beta)
        return out

    ctx.extra["teacher_run"] = params["teacher"] or (ctx.spec.model.from_run or None)
    try:
        ctx.fit(student, epochs=params["epochs"], phase="distill", loss_fn=loss_fn)
    finally:
        for tap in taps or ():
            tap.remove()  # the student is saved and exported: no hook may stay on it
    return student


@register("compact", family="distillation", needs_base=False, params=_student_params(), check=_check_student,
          help="Train the student architecture from scratch on labels only, with the same epoch budget as "
               "distill: the plain comparison for a distilled student.")
def compact(model, ctx, params):
    student = build_student(ctx, params)
    ctx.fit(student, epochs=params["epochs"], phase="train")
    return student
