"""Attention transfer (Zagoruyko & Komodakis 2017, "Paying more attention to attention", ICLR;
arXiv 1612.03928): the student learns where the teacher's feature maps are active, besides its labels.

The attention map of a feature map A (C x H x W) is Q = mean over channels of A^2, flattened and
scaled to unit L2 norm; the loss is beta/2 x the sum over paired layers of the mean squared
difference between the student's and the teacher's maps (the paper's code; beta 1000). Channel
counts may differ: the maps are channel-free.

Layer pairing: the paper pairs the outputs of the residual groups, the last layer at each spatial
resolution. Here, for any architecture, each model's "stage outputs" are found by one forward pass:
for every resolution larger than 1 x 1, the module whose 4-D output at that resolution completes
last (a ResNet's layer1/layer2/layer3, a MobileNet's last block before each down-sampling). Student
and teacher stages are paired by resolution; resolutions only one of them has are left out.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import measure
from ..spec import SpecError


@torch.no_grad()
def stage_outputs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[tuple[int, int], str]:
    """{(H, W): name of the module whose output at that resolution completes last} for one image."""
    last: dict[tuple[int, int], str] = {}
    hooks = []
    for name, m in model.named_modules():
        if name:  # the model itself returns logits
            def hook(mod, inp, out, name=name):
                if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[2] * out.shape[3] > 1:
                    last[tuple(out.shape[2:])] = name
            hooks.append(m.register_forward_hook(hook))
    measure.forward_once(model, input_shape, hooks)
    return last


def attention_map(a: torch.Tensor) -> torch.Tensor:
    """Unit-norm spatial attention of a batch of feature maps: (B, H*W)."""
    return F.normalize(a.float().pow(2).mean(1).flatten(1))


def at_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor], beta: float) -> torch.Tensor:
    return beta / 2 * sum((attention_map(s) - attention_map(t)).pow(2).mean()
                          for s, t in zip(student_maps, teacher_maps))


class FeatureTap:
    """Keeps the latest outputs of named modules (forward hooks), in a fixed order."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.names, self.out = names, {}
        self.handles = [model.get_submodule(n).register_forward_hook(self._keep(n)) for n in names]

    def _keep(self, name: str):
        def hook(mod, inp, out):
            self.out[name] = out
        return hook

    def maps(self) -> list[torch.Tensor]:
        return [self.out[n] for n in self.names]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def pair_stages(student: nn.Module, teacher: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[str, str]]:
    """(student module, teacher module) at each resolution both have, largest first."""
    s, t = stage_outputs(student, input_shape), stage_outputs(teacher, input_shape)
    common = sorted(set(s) & set(t), key=lambda hw: -hw[0] * hw[1])
    if not common:
        raise SpecError("method.params.loss", "attention transfer pairs feature maps of equal resolution, and the "
                                              f"student's {sorted(s)} and the teacher's {sorted(t)} share none")
    return [(s[hw], t[hw]) for hw in common]
