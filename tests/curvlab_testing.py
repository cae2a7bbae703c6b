"""Helpers for tests: run curvlab's commands in a scratch directory and read MLflow back.

A module of its own (not conftest.py, of which pytest loads several under one name), so test
modules anywhere under tests/ can import it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from curvlab.config import CONFIG_DIR

# Small, quick runs: two epochs of the default MLP, no progress bar noise.
QUICK = ["trainer.max_epochs=2", "trainer.enable_progress_bar=false"]


def run_cli(
    module: str,
    args: list[str],
    cwd: Path,
    timeout: float = 600,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m <module> <args>`` in ``cwd`` with a clean tracking environment.

    ``env`` is added after the caller's ``MLFLOW_*`` variables are dropped (e.g. a server's URI
    and credentials).
    """
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env = {**base, **(env or {}), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{module} {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc


def mlflow_client(workdir: Path) -> MlflowClient:
    """A client of the embedded store curvlab creates in ``workdir``."""
    return MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")


def runs_of(workdir: Path, experiment: str = "curvlab") -> list:
    """All runs of ``experiment`` in the embedded store of ``workdir``, oldest first."""
    client = mlflow_client(workdir)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def compose_train(overrides: list[str] | None = None) -> DictConfig:
    """The root training config with ``overrides``, composed as the CLI would."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides or [])
