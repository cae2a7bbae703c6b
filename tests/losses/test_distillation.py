"""Distillation loss against a float64 loop over the guide's KL divergence (1.2.7) plus CE."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from curvlab.losses import DistillationLoss

CONF = Path(__file__).resolve().parents[2] / "conf" / "loss"


def load(name: str, **overrides: object) -> torch.nn.Module:
    return instantiate(OmegaConf.merge(OmegaConf.load(CONF / f"{name}.yaml"), overrides))


def softmax(z: list[float], t: float = 1.0) -> list[float]:
    e = [math.exp((v - max(z)) / t) for v in z]
    return [v / sum(e) for v in e]


def reference(s, t, labels, temperature: float, alpha: float, smoothing: float = 0.0) -> float:
    """alpha T^2 mean_b sum_i P log(P / Q) + (1 - alpha) mean_b CE, 0 log 0 taken as 0."""
    kl, ce = 0.0, 0.0
    for zs, zt, y in zip(s, t, labels, strict=True):
        p, q = softmax(zt, temperature), softmax(zs, temperature)
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)
        k = len(zs)
        target = [(1 - smoothing) * (c == y) + smoothing / k for c in range(k)]
        ce -= sum(ti * math.log(pi) for ti, pi in zip(target, softmax(zs), strict=True))
    n = len(labels)
    return alpha * temperature**2 * kl / n + (1 - alpha) * ce / n


def logits(seed: int, n: int = 5, k: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(n, k, generator=g, dtype=torch.float64) * 2
    teacher = torch.randn(n, k, generator=g, dtype=torch.float64) * 3
    return student, teacher, torch.randint(0, k, (n,), generator=g)


@pytest.mark.parametrize(
    ("temperature", "alpha", "smoothing"), [(4.0, 0.9, 0.0), (1.0, 0.5, 0.1), (2.5, 1.0, 0.0)]
)
def test_matches_the_formula(temperature: float, alpha: float, smoothing: float) -> None:
    s, t, y = logits(0)

    loss = load("kl_div", temperature=temperature, alpha=alpha, label_smoothing=smoothing)
    value = loss(s, (t, y))

    expected = reference(s.tolist(), t.tolist(), y.tolist(), temperature, alpha, smoothing)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_identical_logits_leave_only_the_label_term() -> None:
    s, _, y = logits(1)

    value = DistillationLoss(temperature=3.0, alpha=0.6)(s, (s.clone(), y))

    assert value.item() == pytest.approx(reference(s.tolist(), s.tolist(), y.tolist(), 3.0, 0.6))
    assert value.item() == pytest.approx(0.4 * reference(s.tolist(), s.tolist(), y.tolist(), 1, 0))


def test_one_class_batch() -> None:
    s, t, y = logits(2)
    y[:] = 3

    value = DistillationLoss(temperature=2.0, alpha=0.3)(s, (t, y))

    assert value.item() == pytest.approx(reference(s.tolist(), t.tolist(), y.tolist(), 2.0, 0.3))


def test_saturated_teacher_is_stable_in_float32() -> None:
    # P underflows to 0 for most classes and Q is ~e^-100 for one: no log(0), no NaN
    s = torch.tensor([[50.0, -50.0, 0.0], [0.0, 1.0, 2.0]], requires_grad=True)
    t = torch.tensor([[-80.0, 80.0, 0.0], [100.0, -100.0, 0.0]])
    y = torch.tensor([1, 0])

    value = DistillationLoss(temperature=1.0, alpha=0.7)(s, (t, y))
    (grad,) = torch.autograd.grad(value, s)

    expected = reference(s.tolist(), t.tolist(), y.tolist(), 1.0, 0.7)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    assert torch.isfinite(grad).all()


def test_teacher_only_target_and_teacher_gets_no_gradient() -> None:
    s, t, y = logits(3)
    s.requires_grad_(True)
    t.requires_grad_(True)

    value = DistillationLoss(temperature=2.0, alpha=1.0)(s, t)
    value.backward()

    assert value.item() == pytest.approx(reference(s.tolist(), t.tolist(), y.tolist(), 2.0, 1.0))
    assert s.grad is not None
    assert t.grad is None
    with pytest.raises(ValueError, match="alpha"):
        DistillationLoss(alpha=0.5)(s, t)


def test_gradients_match_finite_differences() -> None:
    s, t, y = logits(4)
    s.requires_grad_(True)
    loss = DistillationLoss(temperature=3.0, alpha=0.8, label_smoothing=0.05)

    assert torch.autograd.gradcheck(lambda x: loss(x, (t, y)), (s,))
