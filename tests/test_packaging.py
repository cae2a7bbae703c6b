"""The configs ship inside the wheel, so a non-editable install works from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_carries_the_configs_and_runs_from_anywhere(tmp_path: Path) -> None:
    wheels, site, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("curvlab-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300
    )

    # The installed copy, not the source checkout, must be the one imported.
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import curvlab, curvlab.config as c, curvlab.guide as g;"
            "print(curvlab.__file__); print(c.CONFIG_DIR); print(g.GUIDE_CONFIG_DIR)",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    module_file, config_dir, guide_dir = probe.stdout.split()
    assert module_file.startswith(str(site))
    assert config_dir == str(site / "curvlab" / "conf")
    assert (Path(config_dir) / "train.yaml").is_file()
    assert (Path(config_dir) / "model" / "vit.yaml").is_file()
    assert (Path(guide_dir) / "example" / "worked_example_3.yaml").is_file()
    # LAMB's CPU kernel is built from its C source on first use.
    assert (site / "curvlab" / "optim" / "lamb_cpu.c").is_file()

    job = subprocess.run(
        [sys.executable, "-m", "curvlab.cli.train", "--cfg", "job", "model=vit"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "_target_: curvlab.models.ViT" in job.stdout
    assert list(elsewhere.iterdir()) == []
