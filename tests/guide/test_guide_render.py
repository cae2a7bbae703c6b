"""The plain-text table: number formats and layout of the printed walkthrough."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from curvlab.guide import GUIDE_CONFIG_DIR, format_walkthrough, run_example
from curvlab.guide.render import format_number, format_value


@pytest.mark.parametrize(
    ("v", "text"),
    [
        (0.8004990217606297, "0.800499"),
        (-0.2139970957849182, "-0.213997"),
        (4.1500713940938246e-07, "4.150071e-07"),
        (0.00049352, "0.000494"),
        (2.664525e-05, "2.664525e-05"),
        (0.0, "0.000000"),
        (180.0, "180.000000"),
    ],
)
def test_format_number(v: float, text: str) -> None:
    assert format_number(v) == text


def test_format_value_shapes() -> None:
    f64 = torch.float64
    assert format_value(None) == "-"
    assert format_value(torch.tensor([[1.5]], dtype=f64)) == "1.500000"
    assert format_value(torch.tensor([4.1, 0.3], dtype=f64)) == "(4.100000, 0.300000)"
    matrix = torch.tensor([[1.0, 2.0], [-0.5, 1.5]], dtype=f64)
    assert format_value(matrix) == "[[1.000000, 2.000000], [-0.500000, 1.500000]]"


def test_table_text_has_sections_rows_and_the_cross_check(example_config) -> None:
    text = format_walkthrough(run_example(example_config("worked_example_3")))
    lines = text.splitlines()

    assert lines[0].startswith("Worked example III")
    assert lines[2].split() == ["Step", "Quantity", "Expression", "Value", "Note"]
    assert "[Forward pass]" in lines
    assert "[Gradient descent update (one step)]" in lines
    row_14 = next(line for line in lines if line.startswith("14 "))
    assert row_14.split()[:2] == ["14", "J_3"]
    assert "0.336405" in row_14 and row_14.endswith("output Jacobian")
    assert lines[-1].startswith("Cross-check against section 2.9 delta formulas: 32 quantities")


def test_unknown_kind_and_layout_are_refused(example_config) -> None:
    with pytest.raises(ValueError, match=r"example\.kind"):
        run_example({"kind": "attention"})
    with pytest.raises(ValueError, match=r"example\.layout"):
        run_example(example_config("worked_example_3") | {"layout": "sideways"})


def test_default_example_is_worked_example_3_and_writes_nothing() -> None:
    with initialize_config_dir(config_dir=GUIDE_CONFIG_DIR, version_base="1.3"):
        cfg = compose("explain", return_hydra_config=True)

    # The run directory is the launch directory, with no .hydra/ copy and no log file.
    assert (cfg.hydra.run.dir, cfg.hydra.output_subdir, cfg.hydra.job.chdir) == (".", None, False)
    assert "FileHandler" not in str(cfg.hydra.job_logging)
    result = run_example(OmegaConf.to_container(cfg.example, resolve=True))
    assert (result.rows[13].symbol, result.rows[-1].symbol) == ("J_3", "b_3+")
    assert float(result.values["L"]) == pytest.approx(0.022897, abs=1e-6)
