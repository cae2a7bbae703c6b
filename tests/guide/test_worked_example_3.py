"""Worked example III (guide section 3.9): Tables 3.1, 3.2 and 3.3, step by step.

ERRATA confirms Tables 3.1-3.3 to 6 places, so the printed numbers are asserted as printed
(with the lost minus signs restored), each at the table's step number.
"""

from __future__ import annotations

import pytest
import torch

# Table 3.3: step -> (symbol, printed value); None is the update rule's "-".
TABLE_3_3 = {
    1: ("x", 2.0),
    2: ("z_1", 2.0),
    3: ("a_1", 2.0),
    4: ("z_2", 1.1),
    5: ("a_2", 0.800499),
    6: ("z_3", 1.300998),
    7: ("yhat", 0.786003),
    8: ("L", 0.022897),
    9: ("dL/dyhat", -0.213997),
    10: ("act'(z_3)", 0.168202),
    11: ("act'(z_2)", 0.359201),
    12: ("act'(z_1)", 1.0),
    13: ("delta_3", -0.035995),
    14: ("J_3", 0.336404),
    15: ("dL/dW_3", -0.028814),
    16: ("dL/db_3", -0.035995),
    17: ("dL/da_2", -0.071990),
    18: ("delta_2", -0.025859),
    19: ("J_2", 0.179600),
    20: ("dL/dW_2", -0.051718),
    21: ("dL/db_2", -0.025859),
    22: ("dL/da_1", -0.012929),
    23: ("delta_1", -0.012929),
    24: ("J_1", 1.5),
    25: ("dL/dW_1", -0.025859),
    26: ("dL/db_1", -0.012929),
    27: ("update", None),
    28: ("W_1+", 1.502586),
    29: ("b_1+", -0.998707),
    30: ("W_2+", 0.505172),
    31: ("b_2+", 0.102586),
    32: ("W_3+", 2.002881),
    33: ("b_3+", -0.296401),
}

# Table 3.2 is Table 3.3 without the Jacobian rows, renumbered.
TABLE_3_2 = dict(
    enumerate((row for row in TABLE_3_3.values() if not row[0].startswith("J_")), start=1)
)

# Table 3.1: the forward pass with the target listed before the loss.
TABLE_3_1 = {
    "x": 2.0,
    "z_1": 2.0,
    "a_1": 2.0,
    "z_2": 1.1,
    "a_2": 0.800499,
    "z_3": 1.300998,
    "yhat": 0.786003,
    "y": 1.0,
    "L": 0.022897,
}


def _assert_table(result, table: dict[int, tuple[str, float | None]]) -> None:
    assert len(result.rows) == len(table)
    for step, (symbol, expected) in table.items():
        row = result.rows[step - 1]
        assert (row.step, row.symbol) == (step, symbol)
        if expected is None:
            assert row.value is None
        else:
            assert float(row.value) == pytest.approx(expected, abs=1e-6), f"step {step} {symbol}"


def test_table_3_3_with_jacobians(run) -> None:
    result = run("worked_example_3")

    _assert_table(result, TABLE_3_3)
    assert result.row("J_3").note == "output Jacobian"
    assert result.row("J_1").note == "input Jacobian"


def test_table_3_2_without_jacobians(run) -> None:
    result = run("worked_example_3", "example.jacobians=false")

    _assert_table(result, TABLE_3_2)
    assert all(row.note == "" for row in result.rows)


def test_table_3_1_forward_values(run) -> None:
    values = run("worked_example_3").values

    for symbol, expected in TABLE_3_1.items():
        assert float(values[symbol]) == pytest.approx(expected, abs=1e-6), symbol


def test_section_3_9_7_update_for_any_eta(run) -> None:
    # theta+ = theta + |grad| eta for every parameter, since all gradients are negative.
    result = run("worked_example_3", "example.lr=0.5")

    grads = {"W_1": 0.025859, "b_1": 0.012929, "W_2": 0.051718, "b_2": 0.025859}
    grads |= {"W_3": 0.028814, "b_3": 0.035995}
    theta = {"W_1": 1.5, "b_1": -1.0, "W_2": 0.5, "b_2": 0.1, "W_3": 2.0, "b_3": -0.3}
    for name, g in grads.items():
        assert float(result.values[f"{name}+"]) == pytest.approx(theta[name] + 0.5 * g, abs=1e-6)


def test_update_lowers_the_loss(run) -> None:
    # A small gradient step must reduce L; a wrong sign in the update would raise it.
    before = run("worked_example_3")
    W = [float(before.values[f"W_{k}+"]) for k in (1, 2, 3)]
    b = [float(before.values[f"b_{k}+"]) for k in (1, 2, 3)]
    after = run("worked_example_3", f"example.W={W}", f"example.b={b}", "example.lr=null")

    assert float(after.values["L"]) < float(before.values["L"]) - 1e-4


def test_autograd_matches_the_delta_formulas(run) -> None:
    result = run("worked_example_3")

    assert set(result.diffs()) >= {"delta_1", "delta_2", "delta_3", "J_2", "W_3+", "dL/dx"}
    assert result.max_abs_diff < 1e-12


def test_lr_null_stops_after_the_backward_pass(run) -> None:
    result = run("worked_example_3", "example.lr=null")

    assert result.rows[-1].symbol == "dL/db_1"
    assert "W_1+" not in result.values
    assert isinstance(result.values["dL/dW_1"], torch.Tensor)
