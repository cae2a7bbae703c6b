"""Shared helpers for the guide's worked-example tests: load an example as the CLI would."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from curvlab.guide import GUIDE_CONFIG_DIR, Walkthrough, run_example


def _load(name: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    with initialize_config_dir(config_dir=GUIDE_CONFIG_DIR, version_base="1.3"):
        cfg = compose("explain", overrides=[f"example={name}", *overrides])
    return OmegaConf.to_container(cfg.example, resolve=True)


@pytest.fixture
def example_config() -> Callable[..., dict[str, Any]]:
    """The ``example`` node of the explain config with ``example=NAME`` and overrides."""
    return _load


@pytest.fixture
def run() -> Callable[..., Walkthrough]:
    """Compute an example of ``curvlab/guide/conf/example`` by name, with optional overrides."""

    def _run(name: str, *overrides: str) -> Walkthrough:
        return run_example(_load(name, overrides))

    return _run
