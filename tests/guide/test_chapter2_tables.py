"""Chapter 2 of the guide: Tables 2.1 (one neuron), 2.2-2.3 (two sigmoid layers) and 2.4-2.7.

Where a printed number is wrong (the guide's ERRATA), the float64 value is asserted and a
comment names the table; minus signs lost in conversion (printed as "=") are restored.
"""

from __future__ import annotations

import pytest


def test_table_2_1_single_neuron(run) -> None:
    result = run("single_neuron")

    expected = {1: ("x", 2.0), 2: ("W_1", 3.0), 3: ("b_1", 1.0), 4: ("z_1", 7.0)}
    # Table 2.1 prints 0.999088; sigma(7) = 0.99908895 rounds to 0.999089.
    expected |= {5: ("yhat", 0.999089), 6: ("y", 1.0)}
    for step, (symbol, value) in expected.items():
        row = result.rows[step - 1]
        assert (row.step, row.symbol) == (step, symbol)
        assert float(row.value) == pytest.approx(value, abs=1e-6)

    # Table 2.1 prints 4.16e-7; ERRATA: the loss is 4.150071e-7.
    loss = result.rows[6]
    assert (loss.step, loss.symbol) == (7, "L")
    assert float(loss.value) == pytest.approx(4.150071e-7, rel=1e-6)


# Tables 2.2-2.3 (ERRATA: a two-layer sigmoid network, x = 2, (w1, b1) = (3, 1),
# (w2, b2) = (4, -2), y = 1). Printed values that are off are replaced by the computed ones.
TABLES_2_2_2_3 = {
    "dL/dyhat": -0.119586,  # printed "=0.119587": sign lost, last digit off
    "act'(z_2)": 0.105285,  # printed 0.105233
    "delta_2": -0.012591,  # printed "=0.012580"
    "dz_2/dW_2": 0.999089,  # a_1 = sigma(7); printed 0.999088
    "dL/dW_2": -0.012579,  # printed "=0.012569"
    "dz_2/db_2": 1.0,
    "dL/db_2": -0.012591,  # printed "=0.012580"
    "dz_2/da_1": 4.0,
    "dL/da_1": -0.050363,  # printed "=0.050319"
    "dz_1/dW_1": 2.0,
    "dz_1/db_1": 1.0,
}
TABLE_2_3_SMALL = {
    "act'(z_1)": 9.102212e-4,  # a_1 (1 - a_1); printed 0.000911
    "delta_1": -4.584110e-5,  # printed "= 4.584e-5"
    "dL/dW_1": -9.168220e-5,  # printed "= 9.168e-5"
    "dL/db_1": -4.584110e-5,
}


def test_tables_2_2_and_2_3_two_sigmoid_layers(run) -> None:
    result = run("two_layer_2_2")

    for symbol, value in TABLES_2_2_2_3.items():
        assert float(result.row(symbol).value) == pytest.approx(value, abs=1e-6), symbol
    for symbol, value in TABLE_2_3_SMALL.items():
        assert float(result.row(symbol).value) == pytest.approx(value, rel=1e-6), symbol
    assert result.max_abs_diff < 1e-15


# Tables 2.4-2.7 in order, step -> (symbol, value). "=1", "=0.3" and the other "=" entries
# are negative numbers whose minus sign became "=" (ERRATA).
TABLES_2_4_TO_2_7 = {
    1: ("x", 2.0),
    2: ("W_1", 1.5),
    3: ("b_1", -1.0),
    4: ("z_1", 2.0),
    5: ("a_1", 2.0),
    6: ("W_2", 0.5),
    7: ("b_2", 0.1),
    8: ("z_2", 1.1),
    9: ("a_2", 0.800499),
    10: ("W_3", 2.0),
    11: ("b_3", -0.3),
    12: ("z_3", 1.300998),
    13: ("yhat", 0.786003),
    14: ("y", 1.0),
    15: ("L", 0.022897),
    # Table 2.5: output layer (sigmoid).
    16: ("dL/dyhat", -0.213997),
    17: ("act'(z_3)", 0.168202),
    18: ("delta_3", -0.035995),
    19: ("dz_3/dW_3", 0.800499),
    20: ("dL/dW_3", -0.028814),
    21: ("dz_3/db_3", 1.0),
    22: ("dL/db_3", -0.035995),
    23: ("dz_3/da_2", 2.0),
    24: ("dL/da_2", -0.071990),
    # Table 2.6: hidden layer 2 (tanh).
    25: ("act'(z_2)", 0.359201),
    26: ("delta_2", -0.025859),
    27: ("dz_2/dW_2", 2.0),
    28: ("dL/dW_2", -0.051718),
    29: ("dz_2/db_2", 1.0),
    30: ("dL/db_2", -0.025859),
    31: ("dz_2/da_1", 0.5),
    32: ("dL/da_1", -0.012929),
    # Table 2.7: hidden layer 1 (ReLU).
    33: ("act'(z_1)", 1.0),
    34: ("delta_1", -0.012929),
    35: ("dz_1/dW_1", 2.0),
    36: ("dL/dW_1", -0.025859),
    37: ("dz_1/db_1", 1.0),
    38: ("dL/db_1", -0.012929),
}


def test_tables_2_4_to_2_7_three_layers(run) -> None:
    result = run("worked_example_2")

    assert len(result.rows) == len(TABLES_2_4_TO_2_7)
    for step, (symbol, value) in TABLES_2_4_TO_2_7.items():
        row = result.rows[step - 1]
        assert (row.step, row.symbol) == (step, symbol)
        assert float(row.value) == pytest.approx(value, abs=1e-6), f"step {step} {symbol}"


def test_table_2_6_notes_name_the_steps_used(run) -> None:
    # Table 2.6, step 26: dL/dz_2 = step 24 x step 25; step 28 uses steps 26 and 27.
    result = run("worked_example_2")

    assert result.rows[25].note == "steps 24 and 25"
    assert result.rows[27].note == "steps 26 and 27"
    assert result.rows[24].expression == "1 - a_2^2"
