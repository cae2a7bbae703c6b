"""``curvlab-eval ckpt_path=...``: evaluate a checkpoint on its data's test split.

The checkpoint carries the config it was trained with, so the model, data, task and loss are
rebuilt exactly; results are printed and logged as ``eval/*`` into the checkpoint's MLflow run.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from curvlab.config import CONFIG_DIR
from curvlab.training.build import ConfigError
from curvlab.training.evaluate import evaluate


@hydra.main(config_path=CONFIG_DIR, config_name="eval", version_base="1.3")
def _main(cfg: DictConfig) -> dict[str, float]:
    try:
        return evaluate(cfg)
    except ConfigError as err:
        sys.exit(f"curvlab-eval: {err}")


def main() -> None:
    """Console entry point."""
    _main()


if __name__ == "__main__":
    main()
