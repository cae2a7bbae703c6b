"""Finding the checkpoint to resume from and what curvlab stored in it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

RESUME_KEYWORDS = ("last", "auto")


def resolve_ckpt_path(ckpt_path: str | None, log_dir: str) -> Path | None:
    """Turn the ``ckpt_path`` setting into a file, or None to start fresh.

    ``last`` is the newest ``last.ckpt`` under ``log_dir`` (an error if there is none); ``auto``
    is the same but starts fresh when there is none (for jobs that may be restarted); anything
    else is a path that must exist.
    """
    if not ckpt_path:
        return None
    if ckpt_path in RESUME_KEYWORDS:
        candidates = sorted(Path(log_dir).rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
        if candidates:
            return candidates[-1]
        if ckpt_path == "auto":
            return None
        raise FileNotFoundError(
            f"ckpt_path=last: no last.ckpt under paths.log_dir={log_dir} "
            f"({Path(log_dir).resolve()}). Give a checkpoint path, run from the directory that "
            "holds the earlier run's outputs, or use ckpt_path=auto to start fresh if none."
        )
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path} does not exist; valid values are a checkpoint file, "
            f"'last' (newest last.ckpt under paths.log_dir) or 'auto'."
        )
    return path


def read_curvlab_state(path: Path) -> dict[str, Any]:
    """The ``curvlab`` entry of a checkpoint: config, shapes and MLflow run id."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    state = checkpoint.get("curvlab")
    if state is None:
        raise ValueError(
            f"ckpt_path={path} is not a curvlab checkpoint (it has no 'curvlab' entry with the "
            "config and MLflow run id)."
        )
    return state
