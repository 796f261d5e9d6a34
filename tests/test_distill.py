"""Distillation losses against values computed by hand (plain math, no torch)."""
from __future__ import annotations

import math

import pytest
import torch

from engine.methods.distill import kd_loss, mse_ce_loss, mse_softmax_loss

S, TCH, Y = [1.0, 2.0, 3.0], [3.0, 2.0, 1.0], 0


def softmax(z, T=1.0):
    e = [math.exp(v / T) for v in z]
    return [v / sum(e) for v in e]


def hand_kd(T, alpha):
    pt, ps = softmax(TCH, T), softmax(S, T)
    kl = sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps))
    ce = -math.log(softmax(S)[Y])
    return alpha * T * T * kl + (1 - alpha) * ce


def hand_mse(T):
    return sum((a - b) ** 2 for a, b in zip(softmax(S, T), softmax(TCH, T))) / 3


def args():
    return torch.tensor([S]), torch.tensor([TCH]), torch.tensor([Y])


@pytest.mark.parametrize("T,alpha", [(2.0, 0.7), (1.0, 0.7), (4.0, 0.7), (2.0, 0.0), (2.0, 1.0)])
def test_kd_matches_hand_computation(T, alpha):
    assert kd_loss(*args(), T=T, alpha=alpha).item() == pytest.approx(hand_kd(T, alpha), rel=1e-5)


def test_temperature_and_alpha_move_the_loss_as_they_should():
    ce = -math.log(softmax(S)[Y])
    assert kd_loss(*args(), T=2.0, alpha=0.0).item() == pytest.approx(ce, rel=1e-5)  # labels only
    # Softer targets: the KL between softened distributions shrinks as T grows.
    kl = [kd_loss(*args(), T=T, alpha=1.0).item() / T ** 2 for T in (1.0, 2.0, 4.0)]
    assert kl[0] > kl[1] > kl[2] > 0
    # The student fits label 2 but not the teacher: more teacher weight raises the loss, and the
    # change is linear in alpha with slope T^2 * KL - CE.
    s, t, y2 = torch.tensor([S]), torch.tensor([TCH]), torch.tensor([2])
    lo, hi = kd_loss(s, t, y2, T=2.0, alpha=0.3).item(), kd_loss(s, t, y2, T=2.0, alpha=0.9).item()
    slope = 4 * kl[1] - (-math.log(softmax(S)[2]))
    assert hi > lo and hi - lo == pytest.approx(0.6 * slope, rel=1e-4)
    # A student that equals the teacher pays no distillation term.
    s = torch.tensor([TCH])
    assert kd_loss(s, s, torch.tensor([Y]), T=2.0, alpha=1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_mse_losses_match_hand_computation():
    for T in (1.0, 2.0):
        assert mse_softmax_loss(*args(), T=T).item() == pytest.approx(hand_mse(T), rel=1e-5)
        ce = -math.log(softmax(S)[Y])
        assert mse_ce_loss(*args(), T=T, alpha=0.7).item() == pytest.approx(0.7 * hand_mse(T) + 0.3 * ce, rel=1e-5)
