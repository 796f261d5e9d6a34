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
    return T * T * sum((a - b) ** 2 for a, b in zip(softmax(S, T), softmax(TCH, T)))


def args():
    return torch.tensor([S]), torch.tensor([TCH]), torch.tensor([Y])


@pytest.mark.fast
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


@pytest.mark.parametrize("classes, least", [(10, 0.1), (100, 0.02)])
def test_mse_losses_teach_on_the_scale_of_kd(classes, least):
    """Averaged over classes (F.mse_loss), the MSE term's gradient was 100x (10 classes) to 2000x
    (100 classes) below KD's: the student hardly learned from the teacher. Summed, what remains is
    the loss's own nature: small probabilities make small squared differences with many classes."""
    g = torch.Generator().manual_seed(0)
    t, y = torch.randn(128, classes, generator=g), torch.randint(0, classes, (128,), generator=g)

    def grad_norm(loss_fn):
        s = torch.randn(128, classes, generator=torch.Generator().manual_seed(1)).requires_grad_()
        loss_fn(s, t, y, T=2.0, alpha=1.0).backward()
        return s.grad.norm().item()
    ratio = grad_norm(mse_softmax_loss) / grad_norm(kd_loss)
    assert least < ratio < 10, ratio


def test_label_term_smooths_like_plain_training():
    s, t, y = torch.tensor([S]), torch.tensor([TCH]), torch.tensor([Y])
    smoothed = torch.nn.functional.cross_entropy(s, y, label_smoothing=0.1).item()
    assert kd_loss(s, t, y, T=2.0, alpha=0.0, smoothing=0.1).item() == pytest.approx(smoothed, rel=1e-6)
    assert mse_ce_loss(s, t, y, T=2.0, alpha=0.0, smoothing=0.1).item() == pytest.approx(smoothed, rel=1e-6)


def test_a_teacher_from_another_run_gets_its_own_preprocessing_or_is_refused():
    """Its soft targets only mean something on inputs prepared as it was trained."""
    from types import SimpleNamespace

    from engine.methods.distill import load_teacher
    from engine.spec import SpecError
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 2))
    own = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "class_names": ["a", "b"], "input_size": [3, 8, 8]}

    def ctx(**meta):
        bundle = {"arch_kwargs": {"num_classes": 2}, "meta": {**own, **meta}}
        data = SimpleNamespace(num_classes=2, class_names=["a", "b"], mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.5])
        return SimpleNamespace(load_run=lambda run_id, field: (net, bundle), data=data, input_shape=(3, 8, 8),
                               device=torch.device("cpu"), spec=SimpleNamespace(train=SimpleNamespace(
                                   channels_last=False)))
    teacher = load_teacher(ctx(), "20260101-000000-abcdef")
    raw = torch.rand(2, 3, 8, 8)
    as_job = (raw - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / 0.5
    as_trained = (raw - torch.tensor(own["mean"]).view(1, 3, 1, 1)) / torch.tensor(own["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(teacher(as_job), net(as_trained), atol=1e-5)
    for meta, words in (({"class_names": ["b", "a"]}, "order matters"), ({"input_size": [3, 16, 16]}, "16x16")):
        with pytest.raises(SpecError) as e:
            load_teacher(ctx(**meta), "20260101-000000-abcdef")
        assert e.value.field == "method.params.teacher" and words in str(e.value)
