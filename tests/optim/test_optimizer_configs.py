"""Every conf/optimizer entry builds its optimizer, documents its defaults and descends."""

from __future__ import annotations

import re
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from curvlab.config import CONFIG_DIR
from curvlab.optim import Lamb, Momentum, build_optimizer

CONF = Path(CONFIG_DIR)
EXPECTED = {
    "sgd": torch.optim.SGD,
    "momentum": Momentum,
    "nesterov": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "lamb": Lamb,
}
# The optimizers whose guide formula puts eps inside the square root.
EPS_CONVENTION = ["adagrad", "rmsprop", "adam", "adamw", "lamb"]


def test_the_catalogue_is_complete() -> None:
    assert set(EXPECTED) <= {p.stem for p in (CONF / "optimizer").glob("*.yaml")}


FILES = [
    *(CONF / "optimizer" / f"{name}.yaml" for name in EXPECTED),
    *(CONF / "scheduler").glob("*.yaml"),
    *(CONF / "param_groups").glob("*.yaml"),
    CONF / "experiment" / "large_batch_lamb.yaml",
]


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_default_carries_a_comment(path: Path) -> None:
    values = [
        line
        for line in path.read_text().splitlines()
        if re.match(r"^\s*[A-Za-z]\w*:\s*\S", line)  # a key with a value; _target_ aside
    ]
    assert all("#" in line for line in values), [line for line in values if "#" not in line]


@pytest.mark.parametrize("name", EPS_CONVENTION)
def test_eps_convention_is_stated(name: str) -> None:
    header = (CONF / "optimizer" / f"{name}.yaml").read_text()

    assert "outside the square root" in header and "guide prints" in header


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_optimizer_builds_and_lowers_a_least_squares_loss(name: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 1)
    inputs = torch.randn(64, 6)
    targets = inputs @ torch.linspace(-1, 1, 6) + 0.5
    opt = build_optimizer(
        model, hydra.utils.instantiate(OmegaConf.load(CONF / "optimizer" / f"{name}.yaml"))
    )

    def loss() -> torch.Tensor:
        return torch.nn.functional.mse_loss(model(inputs).squeeze(1), targets)

    start = float(loss().detach())
    for _ in range(300):
        opt.zero_grad()
        loss().backward()
        opt.step()

    assert type(opt) is EXPECTED[name]
    # LAMB's default rate moves each tensor by 0.1% of its norm per step: the slowest here.
    assert float(loss().detach()) < 0.85 * start
