"""Cross entropy and focal losses against float64 loops over the guide's formulas (1.2.4-5)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from curvlab.losses import FocalLoss, SigmoidFocalLoss

CONF = Path(__file__).resolve().parents[2] / "conf" / "loss"


def load(name: str, **overrides: object) -> torch.nn.Module:
    return instantiate(OmegaConf.merge(OmegaConf.load(CONF / f"{name}.yaml"), overrides))


def softmax(z: list[float]) -> list[float]:
    top = max(z)
    e = [math.exp(v - top) for v in z]
    return [v / sum(e) for v in e]


def log_sigmoid(z: float) -> float:
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def clamped_log(p: float) -> float:
    return -100.0 if p <= 0 else max(math.log(p), -100.0)


def bce(p: float, y: float) -> float:
    # 0 * log 0 is taken as 0, as in the limit
    return -(y * clamped_log(p) if y else 0.0) - ((1 - y) * clamped_log(1 - p) if y != 1 else 0.0)


def focal(z: list[float], y: int, alpha: list[float] | None, gamma: float) -> float:
    p_t = softmax(z)[y]
    alpha_t = 1.0 if alpha is None else alpha[y]
    return -alpha_t * (1 - p_t) ** gamma * math.log(p_t)


def sigmoid_focal(z: float, y: float, alpha: float | None, gamma: float) -> float:
    p = 1 / (1 + math.exp(-z))
    p_t = p if y == 1 else 1 - p
    log_p_t = log_sigmoid(z) if y == 1 else log_sigmoid(-z)
    alpha_t = 1.0 if alpha is None else (alpha if y == 1 else 1 - alpha)
    return -alpha_t * (1 - p_t) ** gamma * log_p_t


def logits_and_labels(seed: int, n: int = 6, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * 3
    return z, torch.randint(0, k, (n,), generator=g)


def test_bce_on_probabilities_including_near_and_at_0_and_1() -> None:
    p = torch.tensor([0.3, 0.8, 1e-12, 1 - 1e-12, 1e-12, 1 - 1e-12, 0.0, 1.0], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0], dtype=torch.float64)

    value = load("bce")(p, y)

    expected = sum(bce(a, b) for a, b in zip(p.tolist(), y.tolist(), strict=True)) / len(p)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_bce_weights_given_in_the_config_as_a_tensor() -> None:
    # torch.tensor builds float32 weights, so the inputs are float32 too
    p = torch.tensor([0.2, 0.6, 0.9])
    y = torch.tensor([0.0, 1.0, 0.0])
    w = [0.5, 2.0, 1.0]

    loss = load("bce", weight={"_target_": "torch.tensor", "data": w})
    value = loss(p, y)

    expected = sum(wi * bce(a, b) for wi, a, b in zip(w, p.tolist(), y.tolist(), strict=True)) / 3
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_bce_with_logits_stays_exact_for_huge_logits_in_float32() -> None:
    z = torch.tensor([[-60.0, -3.0, 0.0], [2.5, 40.0, 88.0]])
    y = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]])

    value = load("bce_logits")(z, y)

    terms = [
        -(b * log_sigmoid(a) + (1 - b) * log_sigmoid(-a))
        for a, b in zip(z.flatten().tolist(), y.flatten().tolist(), strict=True)
    ]
    assert value.item() == pytest.approx(sum(terms) / len(terms), rel=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("one_class", [False, True])
def test_cross_entropy_with_label_smoothing(smoothing: float, one_class: bool) -> None:
    z, labels = logits_and_labels(0)
    if one_class:
        labels[:] = 2
    k = z.shape[1]

    value = load("ce", label_smoothing=smoothing)(z, labels)

    expected = 0.0
    for row, y in zip(z.tolist(), labels.tolist(), strict=True):
        target = [(1 - smoothing) * (c == y) + smoothing / k for c in range(k)]
        expected -= sum(t * math.log(p) for t, p in zip(target, softmax(row), strict=True))
    assert value.item() == pytest.approx(expected / len(labels), rel=1e-6)


@pytest.mark.parametrize(
    ("alpha", "gamma"), [(None, 2.0), ([0.25, 1.0, 0.5, 2.0], 2.0), (0.25, 0.5), (None, 0.0)]
)
@pytest.mark.parametrize("one_class", [False, True])
def test_focal_matches_the_guide_formula(alpha, gamma: float, one_class: bool) -> None:
    z, labels = logits_and_labels(1)
    if one_class:
        labels[:] = 1

    value = load("focal", alpha=alpha, gamma=gamma)(z, labels)

    alpha_list = [alpha] * 4 if isinstance(alpha, float) else alpha
    terms = [
        focal(r, y, alpha_list, gamma) for r, y in zip(z.tolist(), labels.tolist(), strict=True)
    ]
    assert value.item() == pytest.approx(sum(terms) / len(terms), rel=1e-6)


def test_focal_with_gamma_0_is_cross_entropy_on_segmentation_shaped_logits() -> None:
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 4, 5), generator=g)

    value = FocalLoss(gamma=0.0)(z, labels)

    assert value.item() == pytest.approx(load("ce")(z, labels).item(), rel=1e-12)


def test_focal_is_finite_with_finite_gradients_when_probabilities_saturate() -> None:
    # float32: p_t rounds to exactly 1 for the first two rows, to ~e^-60 for the last
    z = torch.tensor([[60.0, 0.0, 0.0], [0.0, 30.0, -30.0], [60.0, 0.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 1, 1])

    for gamma in (0.5, 2.0):
        value = FocalLoss(gamma=gamma)(z, labels)
        (grad,) = torch.autograd.grad(value, z)

        expected = (
            sum(focal(r, y, None, gamma) for r, y in zip(z.tolist(), [0, 1, 1], strict=True)) / 3
        )
        assert value.item() == pytest.approx(expected, rel=1e-6)
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (None, 1.5), (0.8, 0.0)])
def test_sigmoid_focal_matches_the_formula_for_large_and_small_logits(alpha, gamma) -> None:
    z = torch.tensor([[-40.0, -2.0, 0.0, 0.5], [3.0, 25.0, -0.1, 12.0]], dtype=torch.float64)
    y = torch.tensor([[1, 0, 1, 0], [1, 0, 0, 1]])

    value = load("focal_binary", alpha=alpha, gamma=gamma)(z, y)

    pairs = zip(z.flatten().tolist(), y.flatten().tolist(), strict=True)
    terms = [sigmoid_focal(a, b, alpha, gamma) for a, b in pairs]
    assert value.item() == pytest.approx(sum(terms) / len(terms), rel=1e-6)


def test_focal_gradients_match_finite_differences() -> None:
    z, labels = logits_and_labels(3)
    z.requires_grad_(True)
    masks = torch.randint(0, 2, z.shape, generator=torch.Generator().manual_seed(4))

    multiclass = FocalLoss(alpha=[0.3, 1.0, 2.0, 0.7], gamma=1.5)
    sigmoid = SigmoidFocalLoss(alpha=0.25, gamma=2.0)

    assert torch.autograd.gradcheck(lambda x: multiclass(x, labels), (z,))
    assert torch.autograd.gradcheck(lambda x: sigmoid(x, masks), (z,))


def test_focal_refuses_bad_hyperparameters() -> None:
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        SigmoidFocalLoss(alpha=1.5)
    with pytest.raises(ValueError, match="reduction"):
        FocalLoss(reduction="avg")
