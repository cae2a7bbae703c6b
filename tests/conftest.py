"""Fixtures shared by every test directory."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from curvlab_testing import run_cli


@pytest.fixture
def train_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``curvlab-train`` in a scratch working directory."""

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli("curvlab.cli.train", list(args), tmp_path, check=check)

    return run
