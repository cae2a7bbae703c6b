"""MSE, MAE, Huber and smooth-L1 from conf/loss against float64 loops over the guide's formulas."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf" / "loss"


def load(name: str, **overrides: float) -> torch.nn.Module:
    return instantiate(OmegaConf.merge(OmegaConf.load(CONF / f"{name}.yaml"), overrides))


def huber(e: float, delta: float) -> float:
    """Guide 1.2.3."""
    return 0.5 * e * e if abs(e) <= delta else delta * (abs(e) - 0.5 * delta)


def smooth_l1(e: float, beta: float) -> float:
    return 0.5 * e * e / beta if abs(e) < beta else abs(e) - 0.5 * beta


REFERENCES = {
    "mse": lambda e: e * e,
    "mae": abs,
    "huber": lambda e: huber(e, 1.0),
    "smooth_l1": lambda e: smooth_l1(e, 1.0),
}


def mean_of(errors: list[float], per_element) -> float:
    return sum(per_element(e) for e in errors) / len(errors)


def sample(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y_hat = torch.randn(4, 3, generator=g, dtype=torch.float64) * 2
    y = torch.randn(4, 3, generator=g, dtype=torch.float64) * 2
    return y_hat, y


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_matches_the_guide_formula(name: str) -> None:
    y_hat, y = sample(0)
    errors = (y - y_hat).flatten().tolist()

    value = load(name)(y_hat, y)

    assert value.item() == pytest.approx(mean_of(errors, REFERENCES[name]), rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("delta", [0.3, 0.7, 2.5])
def test_huber_delta_from_the_config_including_errors_on_the_kink(delta: float) -> None:
    y_hat, y = sample(1)
    y_hat[0, :2] = y[0, :2] - torch.tensor([delta, -delta], dtype=torch.float64)
    errors = (y - y_hat).flatten().tolist()

    value = load("huber", delta=delta)(y_hat, y)

    expected = mean_of(errors, lambda e: huber(e, delta))
    assert value.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("beta", [0.25, 1.5])
def test_smooth_l1_is_huber_divided_by_beta(beta: float) -> None:
    y_hat, y = sample(2)
    errors = (y - y_hat).flatten().tolist()

    value = load("smooth_l1", beta=beta)(y_hat, y)

    assert value.item() == pytest.approx(mean_of(errors, lambda e: smooth_l1(e, beta)), rel=1e-6)
    assert value.item() == pytest.approx(
        mean_of(errors, lambda e: huber(e, beta)) / beta, rel=1e-6
    )


def test_perfect_prediction_costs_nothing() -> None:
    y_hat, _ = sample(3)

    for name in REFERENCES:
        assert load(name)(y_hat, y_hat.clone()).item() == 0.0
