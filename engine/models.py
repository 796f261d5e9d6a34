"""Architecture registry: torchvision's builders, and the CIFAR literature's nets built natively.

``build(arch, num_classes, small_input)`` makes a fresh model. ``ARCHS`` lists every name with
how it is built: a torchvision builder plus the stem surgery that adapts it to small images
(3x3 stride-1 first conv, no early max-pool, as in the CIFAR literature), or a net of
``engine.cifar_nets`` made for 32x32 inputs (``native``: it has no other stem, so
``small_input`` changes nothing).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torchvision.models as tvm

from . import cifar_nets
from .spec import SpecError


def _conv_like(old: nn.Conv2d, kernel: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(old.in_channels, old.out_channels, kernel, stride, kernel // 2, bias=old.bias is not None)


def _resnet_stem(m: nn.Module) -> None:
    m.conv1 = _conv_like(m.conv1, 3, 1)
    m.maxpool = nn.Identity()


def _first_conv_stride1(path: str) -> Callable[[nn.Module], None]:
    def adapt(m: nn.Module) -> None:
        conv = m.get_submodule(path)
        conv.stride = (1, 1)
    return adapt


def _densenet_stem(m: nn.Module) -> None:
    m.features.conv0 = _conv_like(m.features.conv0, 3, 1)
    m.features.pool0 = nn.Identity()


def _shufflenet_stem(m: nn.Module) -> None:
    m.conv1[0] = _conv_like(m.conv1[0], 3, 1)
    m.maxpool = nn.Identity()


def _googlenet_stem(m: nn.Module) -> None:
    # As ResNet's: 32x32 is downsampled 8x (to 4x4 before the pooling), not 32x.
    m.conv1.conv = _conv_like(m.conv1.conv, 3, 1)
    m.maxpool1 = nn.Identity()


def _inception_v3_stem(m: nn.Module) -> None:
    # Natively 299 px becomes 8x8 and anything under 75 px nothing. A stride-1 first conv and no first
    # max-pool take 32x32 to 2x2 before the pooling (inputs from 21 px on); the 3x3 convs keep no padding
    # so that every later layer keeps its torchvision shape.
    m.Conv2d_1a_3x3.conv.stride = (1, 1)
    m.maxpool1 = nn.Identity()


def _convnext_stem(m: nn.Module) -> None:
    # The 4x4 stride-4 "patchify" stem then three 2x downsamplings take 32x32 to 1x1; a 3x3 stride-1 stem
    # leaves 4x4 before the pooling, as the CIFAR ResNets.
    m.features[0][0] = _conv_like(m.features[0][0], 3, 1)


def _regnet_y_400mf(**kwargs: Any) -> nn.Module:
    # torchvision's builder computes the stage widths with tensors and reads them back (.tolist()), which the
    # meta device (where bundles are first checked, allocating nothing) cannot do: they are computed on the
    # CPU, with torchvision's own settings for this net, and handed to its RegNet.
    with torch.device("cpu"):
        params = tvm.regnet.BlockParams.from_init_params(depth=16, w_0=48, w_a=27.89, w_m=2.09, group_width=8,
                                                         se_ratio=0.25)
    return tvm.RegNet(params, norm_layer=partial(nn.BatchNorm2d, eps=1e-05, momentum=0.1), **kwargs)


def _vgg_small(m: nn.Module) -> None:
    # 32x32 leaves a 1x1 map: drop the 7x7 pooling and the 100M-parameter 4096-wide head.
    num_classes = m.classifier[-1].out_features
    m.avgpool = nn.AdaptiveAvgPool2d(1)
    m.classifier = nn.Sequential(nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(512, num_classes))


class _WidthResNet(tvm.ResNet):
    """torchvision's ResNet with every stage's channels (stem, the four stages, the classifier's input) scaled by
    ``width``: the ResNet-18 control of a structured cut (the same family at the cut's MACs, ``methods.control``).
    At width 1 ``build`` keeps torchvision's own class, so earlier bundles load as they were."""

    def __init__(self, block: type, layers: list[int], num_classes: int, width: float):
        self._width, self._stem_done = width, False
        super().__init__(block, layers, num_classes=num_classes)
        self.fc = nn.Linear(self._c(512) * block.expansion, num_classes)

    def _c(self, channels: int) -> int:
        return max(1, round(channels * self._width))

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if not self._stem_done:   # the stem was built at 64 channels just before the first stage: rebuild it
            self._stem_done, self.inplanes = True, self._c(64)
            self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = self._norm_layer(self.inplanes)
        return super()._make_layer(block, self._c(planes), blocks, stride, dilate)


def _resnet18(num_classes: int = 1000, width_mult: float = 1.0, **kwargs: Any) -> nn.Module:
    if width_mult == 1.0:
        return tvm.resnet18(weights=None, num_classes=num_classes, **kwargs)
    return _WidthResNet(tvm.resnet.BasicBlock, [2, 2, 2, 2], num_classes, width_mult)


@dataclass(frozen=True)
class Arch:
    name: str
    small_stem: Callable[[nn.Module], None] | None  # None: a native small-input net, or one without (no_small_stem)
    family: str
    builder: Callable[..., nn.Module] | None = None  # (num_classes, width) -> model; None: torchvision's
    width: bool = False  # takes a channel-width multiplier
    tv_kwargs: dict[str, Any] = field(default_factory=dict, hash=False)  # torchvision builder's options
    tv_builder: Callable[..., nn.Module] | None = None  # in place of tvm.get_model(name, ...)
    no_small_stem: str | None = None  # why the net has no small-input stem (it takes one image size only)

    @property
    def native(self) -> bool:
        return self.builder is not None

    @property
    def stems(self) -> tuple[bool, ...]:
        """The ``small_input`` values it can be built with (a native net has one stem, recorded as small)."""
        return (True,) if self.native else (False,) if self.no_small_stem else (False, True)


ARCHS: dict[str, Arch] = {a.name: a for a in [
    # a width multiplier too (_WidthResNet): the control of a ResNet-18 structured cut is a narrower ResNet-18
    Arch("resnet18", _resnet_stem, "resnet", width=True, tv_builder=_resnet18),
    Arch("resnet34", _resnet_stem, "resnet"),
    Arch("resnet50", _resnet_stem, "resnet"),
    Arch("mobilenet_v2", _first_conv_stride1("features.0.0"), "mobilenet"),
    Arch("mobilenet_v3_small", _first_conv_stride1("features.0.0"), "mobilenet"),
    Arch("mobilenet_v3_large", _first_conv_stride1("features.0.0"), "mobilenet"),
    Arch("squeezenet1_1", _first_conv_stride1("features.0"), "squeezenet"),
    Arch("densenet121", _densenet_stem, "densenet"),
    Arch("efficientnet_b0", _first_conv_stride1("features.0.0"), "efficientnet"),
    Arch("shufflenet_v2_x1_0", _shufflenet_stem, "shufflenet"),
    Arch("vgg11_bn", _vgg_small, "vgg"),
    # Auxiliary heads off: they add training-only outputs (a tuple, not logits) that the trainer, pruning,
    # ONNX export and the measurements would each have to special-case, and InceptionV3's cannot take a
    # small input. transform_input off: it re-normalises ImageNet-normalised input inside the graph, while
    # Slimbench's data is normalised by the pipeline with the statistics its bundle records.
    # init_weights: torchvision's long-standing initialisation, stated so that it does not warn.
    Arch("googlenet", _googlenet_stem, "googlenet",
         tv_kwargs={"aux_logits": False, "transform_input": False, "init_weights": True}),
    Arch("inception_v3", _inception_v3_stem, "inception",
         tv_kwargs={"aux_logits": False, "transform_input": False, "init_weights": True}),
    # Modern nets. ViT-B/16 takes 224x224 only (its position embeddings are learned per 16x16 patch);
    # vit_cifar is the small ViT made for 32x32 (engine.cifar_nets).
    Arch("vit_b_16", None, "vit", no_small_stem="its 16x16 patches and position embeddings are fixed to 224x224 "
                                                "images; use vit_cifar for small images"),
    Arch("convnext_tiny", _convnext_stem, "convnext"),
    Arch("regnet_y_400mf", _first_conv_stride1("stem.0"), "regnet", tv_builder=_regnet_y_400mf),
    Arch("efficientnet_v2_s", _first_conv_stride1("features.0.0"), "efficientnet"),
    Arch("vit_cifar", None, "vit", cifar_nets.vit_cifar),
    # The CIFAR literature's benchmark nets (DepGraph, HRank, SFP, FPGM, ResRep, TRP, ShrinkBench).
    *(Arch(f"resnet{d}", None, "cifar_resnet", cifar_nets.resnet(d), True) for d in (8, 14, 20, 32, 56, 110)),
    Arch("vgg16_bn_cifar", None, "vgg", cifar_nets.vgg16_bn, True),
    Arch("mobilenet_v2_cifar", None, "mobilenet", cifar_nets.mobilenet_v2_cifar, True),
]}

SMALL_INPUT_MAX = 64


def auto_small_input(image_size: int) -> bool:
    return image_size <= SMALL_INPUT_MAX


# Families whose torchvision builders take a channel-width multiplier (``width_mult``).
WIDTH_FAMILIES = ("mobilenet",)


def has_width(arch: str) -> bool:
    return arch in ARCHS and (ARCHS[arch].width or ARCHS[arch].family in WIDTH_FAMILIES)


def check_width(arch: str, width: float, field: str = "width") -> None:
    if width != 1.0 and not has_width(arch):
        raise SpecError(field, f"{arch} has no width multiplier; width applies to "
                               f"{', '.join(a for a in ARCHS if has_width(a))}")


def build(arch: str, num_classes: int, small_input: bool = False, width: float = 1.0) -> nn.Module:
    """A fresh torchvision ``arch``; ``width`` scales every layer's channels where the arch has a multiplier.

    The width is kept on the model (``slimbench_width``) so that its checkpoint bundle records it."""
    if arch not in ARCHS:
        raise SpecError("model.arch", f"unknown architecture {arch!r}; valid: {', '.join(ARCHS)}")
    if num_classes < 2:
        raise SpecError("num_classes", f"need at least 2 classes, got {num_classes}")
    check_width(arch, width)
    spec = ARCHS[arch]
    if spec.builder is not None:
        model = spec.builder(num_classes, float(width))
    else:
        kwargs = {**spec.tv_kwargs, **({"width_mult": float(width)} if width != 1.0 else {})}
        if small_input and spec.no_small_stem:
            raise SpecError("model.small_input", f"{arch} has no small-input stem: {spec.no_small_stem}")
        model = (spec.tv_builder(num_classes=num_classes, **kwargs) if spec.tv_builder is not None
                 else tvm.get_model(arch, weights=None, num_classes=num_classes, **kwargs))
        if small_input:
            spec.small_stem(model)
    model.slimbench_width = float(width)
    return model


@torch.no_grad()
def zero_init_residual(model: nn.Module) -> int:
    """Zero the scale of the last BatchNorm in each residual block (Goyal et al. 2017; torchvision's
    ``zero_init_residual``), so that every block starts as the identity and a deep net trains like a
    shallow one at first. CIFAR and torchvision BasicBlocks: ``bn2``; Bottlenecks: ``bn3``. Returns how
    many layers it zeroed (0 for nets without such blocks). Only for training from scratch."""
    last = {cifar_nets.BasicBlock: "bn2", tvm.resnet.BasicBlock: "bn2", tvm.resnet.Bottleneck: "bn3"}
    zeroed = 0
    for m in model.modules():
        name = last.get(type(m))
        if name is not None:
            nn.init.zeros_(getattr(m, name).weight)
            zeroed += 1
    return zeroed


@torch.no_grad()
def check_input_fits(model: nn.Module, arch: str, input_shape: tuple[int, ...], field: str) -> None:
    """Refuse, before any training, an architecture whose downsampling leaves nothing of this input
    size (e.g. SqueezeNet on 8x8 digits), naming the field and the way out."""
    vit = model.image_size if isinstance(model, tvm.VisionTransformer) else None
    if vit is not None and tuple(input_shape[-2:]) != (vit, vit):
        # A ViT's position embeddings fix its input size: a larger image is refused as a smaller one is.
        raise SpecError(field, f"{arch} takes {vit}x{vit} images only (its position embeddings are learned per "
                               f"patch of a {vit}x{vit} image), not {input_shape[-2]}x{input_shape[-1]}; set "
                               f"data.image_size to {vit}")
    was_training = model.training
    try:
        if _fits(model.eval(), input_shape):
            return
        h, w = input_shape[-2:]
        # Searched on a weightless copy (the meta device checks shapes only): seconds saved per probe.
        least = _least_size(copy.deepcopy(model).to("meta"), input_shape[0])
        raise SpecError(field, f"{arch} cannot take {h}x{w} inputs (its downsampling leaves nothing of the "
                               f"image; it needs at least {least}x{least} as built here); choose another "
                               f"architecture or set data.image_size to {least} or more")
    finally:
        model.train(was_training)


def _fits(model: nn.Module, input_shape: tuple[int, ...]) -> bool:
    try:
        model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    except RuntimeError as e:
        if "too small" not in str(e) and "greater than actual input size" not in str(e):
            raise
        return False
    return True


def _least_size(model: nn.Module, channels: int) -> int:
    """The smallest square input the model takes (bisection; a fit is monotone in the size)."""
    lo, hi = 1, 32  # lo does not fit (or is 1), hi does
    while not _fits(model, (channels, hi, hi)):
        if hi >= 1024:  # no registered net needs that much: a net that fits no size must not loop forever
            return hi
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _fits(model, (channels, mid, mid)) else (mid, hi)
    return hi


def classifier_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """The last layer that maps to the classes (Linear, or SqueezeNet's 1x1 conv)."""
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            last = (name, mod)
    assert last is not None
    return last


def load_imagenet_weights(model: nn.Module, path: str | Path, freeze_backbone: bool = False) -> list[str]:
    """Load a torchvision ImageNet state dict from a local file, keeping our classifier head.

    Tensors whose shapes differ (the 1000-class head, a small-input stem) are left freshly
    initialised; their names are returned so the run log can say what was not transferred.
    """
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SpecError("model.pretrained", f"cannot read {path} as a weights file: {e}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise SpecError("model.pretrained", f"{path} does not hold a state dict of tensors")
    own = model.state_dict()
    usable = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    if len(usable) < len(own) // 2:
        raise SpecError("model.pretrained", f"{path} does not match this architecture: only {len(usable)} of "
                        f"{len(own)} tensors fit (e.g. missing {next(iter(set(own) - set(usable)))})")
    model.load_state_dict(usable, strict=False)
    skipped = sorted(set(own) - set(usable))
    if freeze_backbone:
        head_name, _ = classifier_layer(model)
        for name, p in model.named_parameters():
            # The head and anything not transferred (e.g. a small-input stem) still learn.
            p.requires_grad = name.startswith(head_name + ".") or name in skipped
    return skipped
