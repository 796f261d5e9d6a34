"""Grad-CAM saliency: where in the image a model's prediction comes from.

Activations and gradients of the last convolution are captured with hooks; the map is the
ReLU of the gradient-weighted channel sum, upsampled to the input and scaled to [0, 1].
Models without convolutions fall back to input-gradient magnitude.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def last_conv(model: nn.Module) -> nn.Module | None:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def grad_cam(model: nn.Module, x: torch.Tensor, target: int | None = None) -> np.ndarray:
    """(H, W) float32 map in [0, 1] for input ``x`` of shape (1, C, H, W) and class ``target`` (default: top-1)."""
    model.eval()
    layer = last_conv(model)
    if layer is None:
        return input_gradient(model, x, target)
    store: dict[str, torch.Tensor] = {}

    def keep(_m, _inp, out):
        store["act"] = out
        out.register_hook(lambda g: store.__setitem__("grad", g))

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(x)
            target = int(logits.argmax(1)[0]) if target is None else int(target)
            model.zero_grad(set_to_none=True)
            logits[0, target].backward()
    finally:
        handle.remove()
    act, grad = store["act"].detach(), store.get("grad")
    if grad is None:
        return input_gradient(model, x, target)
    weights = grad.detach().mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return _unit(cam)


def input_gradient(model: nn.Module, x: torch.Tensor, target: int | None = None) -> np.ndarray:
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        target = int(logits.argmax(1)[0]) if target is None else int(target)
        logits[0, target].backward()
    return _unit(x.grad.detach().abs().amax(1)[0])


def _unit(t: torch.Tensor) -> np.ndarray:
    t = t.float()
    lo, hi = t.min(), t.max()
    return ((t - lo) / (hi - lo)).numpy().astype(np.float32) if hi > lo else np.zeros(t.shape, np.float32)


def colormap(cam: np.ndarray) -> np.ndarray:
    """[0, 1] map -> (H, W, 3) uint8, blue (cold) through green to red (hot)."""
    r = np.clip(1.5 - np.abs(4 * cam - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * cam - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * cam - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45, size: int = 224) -> np.ndarray:
    """Blend the heat map over the image (both resized to ``size`` pixels square) -> uint8 RGB."""
    img = torch.from_numpy(np.array(image, dtype=np.float32))  # a copy: PIL-backed arrays are read-only
    img = img[..., None].expand(-1, -1, 3) if img.ndim == 2 else img[..., :3]
    img = F.interpolate(img.permute(2, 0, 1)[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    heat = torch.from_numpy(cam)[None, None]
    heat = F.interpolate(heat, size=(size, size), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()
    blended = (1 - alpha) * img.permute(1, 2, 0).numpy() + alpha * colormap(heat)
    return blended.clip(0, 255).astype(np.uint8)
