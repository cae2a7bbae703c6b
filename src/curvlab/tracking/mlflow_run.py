"""MLflow tracking: where runs go, what each run records, and continuing a run on resume."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
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


class BufferedMLFlowLogger(MLFlowLogger):
    """Lightning's MLflow logger, writing metrics in one batch every few seconds.

    An MLflow ``log_batch`` costs milliseconds whatever its size (a database transaction or a
    server round trip, even when queued for MLflow's background thread): written every
    ``log_every_n_steps``, it slowed a small model's steps by half a millisecond on average.
    Metrics keep the time they were logged at and are written together once
    ``flush_interval_s`` has passed, after every checkpoint (a run resumed from it misses no
    step) and when the run ends.

    Args:
        flush_interval_s: pending metrics are written at the first log call this long after
            the last write.
        synchronous: False queues writes for MLflow's background thread.
        **kwargs: as for ``MLFlowLogger``.
    """

    def __init__(
        self, flush_interval_s: float = 5.0, synchronous: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(synchronous=synchronous, **kwargs)
        self.flush_interval_s = flush_interval_s
        self._synchronous = synchronous
        self._pending: list[Metric] = []
        self._last_flush = time.monotonic()

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        logged_at = int(time.time() * 1000)
        self._pending += [
            Metric(key=name, value=float(value), timestamp=logged_at, step=step or 0)
            for name, value in metrics.items()
            if not isinstance(value, str)
        ]
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    @rank_zero_only
    def flush(self) -> None:
        """Write every pending metric now."""
        pending, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        for start in range(0, len(pending), _MAX_METRICS_PER_BATCH):
            self.experiment.log_batch(
                run_id=self.run_id,
                metrics=pending[start : start + _MAX_METRICS_PER_BATCH],
                synchronous=self._synchronous,
            )

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        self.flush()
        super().after_save_checkpoint(checkpoint_callback)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        self.flush()
        super().finalize(status)


# MLflow refuses batches of more metrics than this.
_MAX_METRICS_PER_BATCH = 1000


def make_logger(logger_cfg: DictConfig, run_id: str | None = None) -> BufferedMLFlowLogger:
    """An MLflow logger for a new run, or continuing ``run_id``."""
    uri = resolve_tracking_uri(logger_cfg.tracking_uri)
    check_reachable(uri)
    return BufferedMLFlowLogger(
        experiment_name=logger_cfg.experiment_name,
        run_name=logger_cfg.run_name,
        tracking_uri=uri,
        tags=run_tags(logger_cfg.tags or {}) if run_id is None else None,
        run_id=run_id,
        log_model=False,
        # A training step never waits for a database commit or a server round trip: metrics
        # are batched (above) and the batches queued for MLflow's background thread.
        synchronous=False,
        flush_interval_s=logger_cfg.get("flush_interval_s", 5.0),
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
