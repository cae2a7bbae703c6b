"""Learning-rate scaling with the global batch, and the large-batch LAMB experiment."""

from __future__ import annotations

import math

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import curvlab.optim.scaling  # noqa: F401  (registers the scale_lr resolver)
from curvlab.config import CONFIG_DIR
from curvlab.optim.scaling import scale_lr


@pytest.mark.parametrize(
    ("rule", "target", "expected"),
    [
        ("linear", None, 0.008),
        ("sqrt", None, 0.001 * math.sqrt(8)),
        ("none", None, 0.001),
        ("auto", "torch.optim.SGD", 0.008),
        ("auto", "curvlab.optim.Momentum", 0.008),
        ("auto", "curvlab.optim.Lamb", 0.001 * math.sqrt(8)),
        ("auto", "torch.optim.AdamW", 0.001 * math.sqrt(8)),
    ],
)
def test_rules(rule: str, target: str | None, expected: float) -> None:
    assert scale_lr(0.001, 64, 512, rule, target) == pytest.approx(expected, rel=1e-15)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown scaling rule"):
        scale_lr(0.1, 64, 128, "cubic")
    with pytest.raises(ValueError, match="auto needs"):
        scale_lr(0.1, 64, 128, "auto")
    with pytest.raises(ValueError, match="positive"):
        scale_lr(0.1, 0, 128)


def test_resolver_reads_other_config_values() -> None:
    cfg = OmegaConf.create({"b": 256, "lr": "${scale_lr:0.01,64,${b},sqrt}"})

    assert cfg.lr == pytest.approx(0.02, rel=1e-15)


def compose_train(overrides: list[str]) -> OmegaConf:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_large_batch_lamb_experiment() -> None:
    cfg = compose_train(["experiment=large_batch_lamb"])

    assert cfg.optimizer._target_ == "curvlab.optim.Lamb"
    assert cfg.scheduler._target_ == "curvlab.optim.schedulers.warmup_cosine"
    assert cfg.scheduler.warmup_steps > 0
    assert cfg.data.batch_size == 512
    assert cfg.optimizer.lr == pytest.approx(0.01 * math.sqrt(512 / 64), rel=1e-15)


def test_large_batch_rule_follows_the_optimizer_and_the_batch() -> None:
    sgd = compose_train(["experiment=large_batch_lamb", "optimizer=sgd"])
    bigger = compose_train(["experiment=large_batch_lamb", "data.batch_size=1024"])
    linear = compose_train(["experiment=large_batch_lamb", "lr_scaling.rule=linear"])

    assert sgd.optimizer.lr == pytest.approx(0.01 * 8, rel=1e-15)
    assert bigger.optimizer.lr == pytest.approx(0.01 * 4, rel=1e-15)
    assert linear.optimizer.lr == pytest.approx(0.01 * 8, rel=1e-15)
