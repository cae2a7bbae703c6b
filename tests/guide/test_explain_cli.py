"""The curvlab-explain console script: group and value overrides, output, and no files written.

One run only: the script imports torch and timm, several seconds on a loaded machine. The
default example and the other overrides are covered through Hydra's compose API elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# The console script installed next to the interpreter running the tests.
EXPLAIN = Path(sys.executable).with_name("curvlab-explain")


def _row(text: str, step: int) -> list[str]:
    return next(line for line in text.splitlines() if line.startswith(f"{step} ")).split()


def test_cli_prints_the_vector_example_with_overrides_and_leaves_no_files(
    tmp_path: Path,
) -> None:
    assert EXPLAIN.exists(), f"{EXPLAIN} is missing: install curvlab (pip install -e .)"
    overrides = ["example=vector_3_5", "example.x=[1.0,2.0]", "example.lr=0.5"]

    done = subprocess.run(
        [str(EXPLAIN), *overrides],
        cwd=tmp_path,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("Sections 3.5-3.6")
    assert _row(out, 1)[-3:] == ["(1.000000,", "2.000000)", "-"]
    # z_1 = W_1 (1, 2) + b_1 = (1 + 4 + 0.1, -0.5 + 3 - 0.2).
    assert _row(out, 2)[-3:] == ["(5.100000,", "2.300000)", "-"]
    assert _row(out, 27)[:4] == ["27", "Prop", "to", "x"]
    assert "eta = 0.5" in out
    assert out.splitlines()[-1].startswith("Cross-check against section 2.9 delta formulas")
    # Nothing written: no outputs/, no .hydra/, no log file.
    assert list(tmp_path.iterdir()) == []
