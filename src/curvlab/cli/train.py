"""``curvlab-train``: compose a run from Hydra configs and train it.

Examples:
    curvlab-train model=vit optimizer=adamw trainer.max_epochs=3 data.batch_size=128
    curvlab-train -m optimizer=sgd,adam
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import curvlab.optim.scaling  # noqa: F401  (registers ${scale_lr:...} for configs)
from curvlab.config import CONFIG_DIR
from curvlab.launch import LaunchEnvironmentError, check_launch_environment
from curvlab.training.build import ConfigError
from curvlab.training.fit import train


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def _main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    try:
        return train(
            cfg,
            loss_name=hydra_cfg.runtime.choices.get("loss"),
            overrides=list(hydra_cfg.overrides.task),
        )
    except ConfigError as err:
        # One clear paragraph instead of a traceback: the input was wrong, not curvlab.
        sys.exit(f"curvlab-train: {err}")


def main() -> None:
    """Console entry point."""
    # Under an operator without torchrun, every pod would claim the same ranks and hang.
    try:
        check_launch_environment()
    except LaunchEnvironmentError as err:
        sys.exit(f"curvlab-train: {err}")
    _main()


if __name__ == "__main__":
    main()
