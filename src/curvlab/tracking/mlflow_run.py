"""MLflow tracking: where runs go, what each run records, and continuing a run on resume."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities import rank_zero_only

import curvlab

log = logging.getLogger(__name__)


def resolve_tracking_uri(configured: str | None) -> str:
    """The config's URI, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``.

    The last is MLflow's own default store, so ``mlflow ui`` started in the same directory shows
    the runs.
    """
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast, before any training, when a tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        # The server answered (perhaps 401 without credentials): it is reachable.
        return
    except (urllib.error.URLError, OSError) as err:
        raise ConnectionError(
            f"logger.tracking_uri={uri} is unreachable ({err}). Start the MLflow server, fix "
            "the URI, or leave logger.tracking_uri and $MLFLOW_TRACKING_URI unset to log to the "
            "embedded store mlflow.db in the working directory."
        ) from err


def git_commit(start: Path) -> str | None:
    """The commit of the git checkout holding ``start``, where there is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=start,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_tags(extra: Mapping[str, Any]) -> dict[str, str]:
    """Tags every run carries: curvlab's version, the source commit and the command line."""
    tags = {
        "curvlab.version": curvlab.__version__,
        "curvlab.command": " ".join(sys.argv),
        "mlflow.source.name": Path(sys.argv[0]).name,
    }
    commit = git_commit(Path(curvlab.__file__).parent)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    tags.update({str(k): str(v) for k, v in extra.items()})
    return tags


def make_logger(logger_cfg: DictConfig, run_id: str | None = None) -> MLFlowLogger:
    """An MLflow logger for a new run, or continuing ``run_id``."""
    uri = resolve_tracking_uri(logger_cfg.tracking_uri)
    check_reachable(uri)
    return MLFlowLogger(
        experiment_name=logger_cfg.experiment_name,
        run_name=logger_cfg.run_name,
        tracking_uri=uri,
        tags=run_tags(logger_cfg.tags or {}) if run_id is None else None,
        run_id=run_id,
        log_model=False,
        # Metrics are queued and written by MLflow's background thread: a training step never
        # waits for a database commit or a server round trip.
        synchronous=False,
    )


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay whole."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


@rank_zero_only
def record_run_setup(
    logger: MLFlowLogger, cfg: DictConfig, overrides: list[str], resumed: bool
) -> None:
    """Params (the resolved config, flattened), the config and overrides as YAML artifacts.

    A resumed run keeps its original params (MLflow refuses to change a param) and gets the
    resume's overrides as a second artifact.
    """
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if not resumed:
        logger.log_hyperparams(flatten(resolved))
    suffix = "_resume" if resumed else ""
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / f"config{suffix}.yaml"
        config_file.write_text(OmegaConf.to_yaml(resolved))
        overrides_file = Path(tmp) / f"overrides{suffix}.yaml"
        overrides_file.write_text(OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
        for path in (config_file, overrides_file):
            logger.experiment.log_artifact(logger.run_id, str(path), artifact_path="config")


@rank_zero_only
def log_params(logger: MLFlowLogger, params: Mapping[str, Any]) -> None:
    """Log extra params (e.g. the ViT cost model) on rank zero."""
    logger.log_hyperparams(dict(params))


@rank_zero_only
def log_checkpoint(logger: MLFlowLogger, path: str | os.PathLike[str]) -> None:
    """Upload a checkpoint file under the run's ``checkpoints/`` artifacts."""
    logger.experiment.log_artifact(logger.run_id, str(path), artifact_path="checkpoints")
