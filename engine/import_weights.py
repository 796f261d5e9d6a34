"""Bring your own model: a plain PyTorch state dict of a registered architecture becomes a checkpoint
bundle, so every job, page and download treats it like a model trained here.

Architecture, class count and stem are read from the tensors' names and shapes (``identify``); where
the weights cannot tell (a stem that differs only in stride), the caller says. What no weights can
tell is the input normalisation the model was trained with, and feeding inputs normalised otherwise
silently costs accuracy, so the caller states it too: the dataset's own mean/std (what Slimbench
trains with), ImageNet's, or explicit values.
"""
from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from . import export, models

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
NORMALISATIONS = ("dataset", "imagenet")  # or explicit (mean, std)
# Training scripts wrap the weights (a dict with the epoch, optimiser state, ...) or prefix their names
# (DataParallel/DDP "module.", torch.compile "_orig_mod."); both are undone before matching.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
PREFIXES = ("module.", "_orig_mod.")


class ImportWeightsError(export.BundleError):
    """Weights that cannot become a bundle, with the reason and the way out."""


@dataclass(frozen=True)
class Match:
    arch: str
    small_input: bool
    num_classes: int

    def describe(self) -> str:
        stem = "small-input stem" if self.small_input else "standard stem"
        return f"{self.arch} ({stem}, {self.num_classes} classes)"


# A PyTorch Lightning checkpoint: the LightningModule's state dict under "state_dict", each name
# prefixed by the attribute that holds the network (usually "model."), next to these keys.
LIGHTNING_KEYS = ("pytorch-lightning_version", "global_step", "epoch")
LIGHTNING_HOW = ("save the network's weights alone, e.g. (weights_only=False runs the file's pickled code: "
                 "do it only for a checkpoint you trust) ckpt = torch.load(path, weights_only=False); "
                 "torch.save({{k.removeprefix('{prefix}'): v for k, v in ckpt['state_dict'].items() "
                 "if k.startswith('{prefix}')}}, 'weights.pt')")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a saved state dict, unwrapped and unprefixed; refuses pickled code and bundles."""
    return _state_dict_of(_load(path), Path(path).name)


def _load(path: str | Path) -> Any:
    try:
        return export.load_torch_file(path)
    except export.BundleError as e:  # Lightning pickles its hyper-parameters as its own classes
        if "lightning" not in str(e).lower():
            raise
        raise ImportWeightsError(f"{e}. It is a PyTorch Lightning checkpoint whose hyper-parameters are Lightning "
                                 "objects; " + LIGHTNING_HOW.format(prefix="model.")) from None


def _is_lightning(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) and (
        "pytorch-lightning_version" in obj or all(k in obj for k in LIGHTNING_KEYS[1:]))


def _lightning_weights(sd: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The network's tensors of a LightningModule's state dict: the names under the one attribute
    that holds them ("model." by convention) with that prefix removed."""
    owners = sorted({k.split(".", 1)[0] for k in sd})
    owner = owners[0] if len(owners) == 1 else "model" if "model" in owners else None
    if owner is None or not any(k.startswith(owner + ".") for k in sd):
        raise ImportWeightsError(
            f"{name} is a PyTorch Lightning checkpoint whose module holds several parts and none is called model "
            f"(prefixes {', '.join(o + '.' for o in owners[:6])}{' …' if len(owners) > 6 else ''}): "
            + LIGHTNING_HOW.format(prefix=f"{owners[0]}." if owners else "model."))
    return {k[len(owner) + 1:]: v for k, v in sd.items() if k.startswith(owner + ".")}


def _state_dict_of(obj: Any, name: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and obj.get("format") == export.FORMAT:
        raise ImportWeightsError(f"{name} is already a Slimbench bundle: use it as it is (model.checkpoint)")
    lightning = _is_lightning(obj)
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), dict) and obj[key] and all(torch.is_tensor(v) for v in obj[key].values()):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and torch.is_tensor(v)
                                                       for k, v in obj.items()):
        raise ImportWeightsError(f"{name} does not hold a state dict of tensors (save one with "
                                 "torch.save(model.state_dict(), path))")
    sd = dict(obj)
    if lightning:
        sd = _lightning_weights(sd, name)
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


@functools.lru_cache(maxsize=None)
def _shapes(arch: str, small_input: bool, num_classes: int) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = models.build(arch, num_classes, small_input)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@functools.lru_cache(maxsize=None)
def _head_key(arch: str, small_input: bool) -> str:
    with torch.device("meta"):
        return models.classifier_layer(models.build(arch, 2, small_input))[0] + ".weight"


# BatchNorm's step counters: absent from checkpoints saved before PyTorch 0.4.1 (such as the first
# torchvision ImageNet files) and unused in evaluation, so they are not required to match.
COUNTER = "num_batches_tracked"


def _required(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    return {k: v for k, v in shapes.items() if not k.endswith(COUNTER)}


def identify(sd: dict[str, torch.Tensor]) -> list[Match]:
    """Every registered (architecture, stem) whose tensors these are, exactly: names and shapes
    (BatchNorm step counters may be missing)."""
    shapes = _required({k: tuple(v.shape) for k, v in sd.items()})
    found = []
    for arch, spec in models.ARCHS.items():
        # A native small-input net (CIFAR ResNets, VGG, MobileNetV2) has one stem: recorded as small-input,
        # as a job at its 32 px records it, and never the stride question its weights cannot answer.
        for small in spec.stems:
            head = shapes.get(_head_key(arch, small))
            if not head or head[0] < 2:
                continue
            if _required(_shapes(arch, small, head[0])) == shapes:
                found.append(Match(arch, small, head[0]))
    return found


def _closest(sd: dict[str, torch.Tensor]) -> tuple[str, list[str]] | None:
    """The registered architecture sharing the most tensor names with ``sd``, and what differs."""
    names = set(_required({k: () for k in sd}))

    def score(arch: str) -> int:  # shared names, less the architecture's names these weights lack
        own = set(_required(_shapes(arch, False, 10)))
        return len(names & own) - len(own - names)
    best = max(((score(a), a) for a in models.ARCHS), default=(0, None))
    if best[0] <= 0:
        return None
    head = sd.get(_head_key(best[1], False))
    n = int(head.shape[0]) if head is not None and head.dim() and head.shape[0] >= 2 else 10
    with torch.device("meta"):
        model = models.build(best[1], n, False)
    return best[1], export.fit_problems(model, sd)


def choose(sd: dict[str, torch.Tensor], arch: str | None = None, small_input: bool | None = None) -> Match:
    """The one architecture and stem these weights are, narrowed by what the caller says."""
    matches = [m for m in identify(sd) if (arch is None or m.arch == arch)
               and (small_input is None or m.small_input == small_input or models.ARCHS[m.arch].native)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        if arch is None:
            near = _closest(sd)
            raise ImportWeightsError(
                "these weights fit no registered architecture exactly" + (
                    f"; closest is {near[0]}: " + " | ".join(near[1]) if near else f" ({', '.join(models.ARCHS)})")
                + "; a custom or width-scaled model cannot be imported")
        if arch not in models.ARCHS:
            raise ImportWeightsError(f"unknown architecture {arch!r}; valid: {', '.join(models.ARCHS)}")
        head = sd.get(_head_key(arch, bool(small_input)))
        n = int(head.shape[0]) if head is not None and head.dim() and head.shape[0] >= 2 else 2
        with torch.device("meta"):
            model = models.build(arch, n, bool(small_input))
        raise ImportWeightsError(f"these weights are not {arch}: " + " | ".join(export.fit_problems(model, sd)))
    if len({m.arch for m in matches}) > 1:
        raise ImportWeightsError("these weights fit several architectures ("
                                 f"{', '.join(m.describe() for m in matches)}); name the architecture")
    raise ImportWeightsError(f"{matches[0].arch}'s small-input stem differs from the standard one only in stride, "
                             "which weights do not show; say whether the model used the small-input stem "
                             "(3x3 stride-1 first conv for images of 64 px or less)")


def normalisation(choice: str | Sequence[Sequence[float]]) -> dict[str, Any]:
    """Bundle metadata for the stated normalisation: "dataset", "imagenet" or (mean, std)."""
    if choice == "dataset":
        return {"normalisation": "dataset"}  # no mean/std: each job uses its data's own
    if choice == "imagenet":
        return {"normalisation": "imagenet", **IMAGENET}
    if isinstance(choice, str) or len(choice) != 2:
        raise ImportWeightsError(f"normalisation must be one of {', '.join(NORMALISATIONS)} or (mean, std)")
    mean, std = ([float(v) for v in c] for c in choice)
    if len(mean) != len(std) or len(mean) not in (1, 3):
        raise ImportWeightsError(f"normalisation: mean and std need 1 or 3 values each, got {len(mean)} and {len(std)}")
    if not all(math.isfinite(v) for v in mean + std) or any(s <= 0 for s in std):
        raise ImportWeightsError("normalisation: every mean must be a finite number and every std a positive one")
    return {"normalisation": "custom", "mean": mean, "std": std}


def parse_normalisation(text: str) -> str | tuple[list[float], list[float]]:
    """"dataset", "imagenet" or "MEAN/STD" with comma-separated values, e.g. "0.5,0.5,0.5/0.25,0.25,0.25"."""
    text = text.replace(" ", "")
    if text in NORMALISATIONS:
        return text
    try:
        mean, std = ([float(v) for v in part.split(",")] for part in text.split("/"))
    except ValueError:
        raise ImportWeightsError("expected dataset, imagenet or MEAN/STD such as 0.5,0.5,0.5/0.25,0.25,0.25, "
                                 f"got {text!r}") from None
    normalisation((mean, std))  # checked now, not when the weights are converted
    return mean, std


def to_bundle(path: str | Path, *, arch: str | None = None, small_input: bool | None = None,
              norm: str | Sequence[Sequence[float]] = "dataset",
              class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """A checkpoint bundle of the state dict at ``path``; the weights load into the model exactly."""
    path = Path(path)
    sd = read_state_dict(path)
    match = choose(sd, arch, small_input)
    meta = normalisation(norm)
    if class_names is not None:
        if len(class_names) != match.num_classes:
            raise ImportWeightsError(f"{len(class_names)} class names given for a model with "
                                     f"{match.num_classes} outputs")
        meta["class_names"] = [str(c) for c in class_names]
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ImportWeightsError(f"{len(bad)} tensor(s) hold NaN or infinite values (first: {bad[0]}); such a model "
                                 "answers nothing meaningful")
    model = models.build(match.arch, match.num_classes, match.small_input)
    # strict: identify() compared every name and shape; only counters may be missing (kept at 0)
    model.load_state_dict({**{k: v for k, v in model.state_dict().items() if k.endswith(COUNTER)}, **sd})
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return export.make_bundle(model.eval(), arch=match.arch, num_classes=match.num_classes,
                              small_input=match.small_input, meta=meta,
                              extra={"imported_from": path.name, "imported_sha256": digest})


def inspect(path: str | Path) -> tuple[str, Any]:
    """What a user's checkpoint file is: ("bundle", the bundle) or ("weights", the matching
    architectures, possibly none); raises ``export.BundleError`` for anything unusable."""
    obj = _load(path)
    if isinstance(obj, dict) and obj.get("format") == export.FORMAT:
        return "bundle", export.checked_bundle(obj, Path(path).name)
    return "weights", identify(_state_dict_of(obj, Path(path).name))
