"""Warmup + cosine / linear / polynomial schedules, built as the training module builds them."""

from __future__ import annotations

import math
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from curvlab.config import CONFIG_DIR

TOTAL, WARMUP, RHO = 110, 10, 0.1


def rates(name: str, steps: int = TOTAL + 5, **overrides: float) -> list[float]:
    """The learning rate used at each optimizer step, base rate 1, from conf/scheduler."""
    cfg = OmegaConf.load(Path(CONFIG_DIR) / "scheduler" / f"{name}.yaml")
    cfg.merge_with({"warmup_steps": WARMUP, "min_lr_ratio": RHO, **overrides})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = hydra.utils.instantiate(cfg)(optimizer=opt, total_steps=TOTAL)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return out


@pytest.mark.parametrize(
    ("name", "mid", "quarter"),
    [
        # at p = 1/2 and p = 1/4 of the decay: rho + (1 - rho) * d(p)
        ("cosine", RHO + (1 - RHO) * 0.5, RHO + (1 - RHO) * (1 + math.cos(math.pi / 4)) / 2),
        ("linear", RHO + (1 - RHO) * 0.5, RHO + (1 - RHO) * 0.75),
        ("polynomial", RHO + (1 - RHO) * 0.25, RHO + (1 - RHO) * 0.75**2),
    ],
)
def test_warmup_then_decay_values(name: str, mid: float, quarter: float) -> None:
    lr = rates(name)

    # Warmup: step s runs at (s + 1) / W, reaching the base rate at s = W - 1.
    assert lr[:WARMUP] == pytest.approx([(s + 1) / WARMUP for s in range(WARMUP)], abs=1e-15)
    assert lr[WARMUP] == pytest.approx(1.0, abs=1e-15)

    # Decay over T - W = 100 steps: p = (s - W) / 100.
    assert lr[WARMUP + 25] == pytest.approx(quarter, abs=1e-12)
    assert lr[WARMUP + 50] == pytest.approx(mid, abs=1e-12)
    assert lr[TOTAL:] == pytest.approx([RHO] * 5, abs=1e-12)
    assert all(a >= b for a, b in zip(lr[WARMUP:], lr[WARMUP + 1 :], strict=False))


def test_polynomial_power_one_is_linear() -> None:
    assert rates("polynomial", power=1.0) == pytest.approx(rates("linear"), abs=1e-15)


def test_without_warmup_the_first_step_runs_at_the_base_rate() -> None:
    lr = rates("cosine", warmup_steps=0, min_lr_ratio=0.0)

    assert lr[0] == 1.0
    assert lr[TOTAL // 2] == pytest.approx(0.5, abs=1e-12)
    assert lr[TOTAL] == pytest.approx(0.0, abs=1e-12)


def test_none_config_is_empty() -> None:
    assert OmegaConf.to_container(
        OmegaConf.load(Path(CONFIG_DIR) / "scheduler" / "none.yaml")
    ) in (
        None,
        {},
    )
