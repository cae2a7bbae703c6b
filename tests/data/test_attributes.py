"""Binary and multi-label targets derived from the digits' classes."""

from __future__ import annotations

import pytest
import torch

from curvlab.data import DigitAttributesDataModule
from curvlab.data.attributes import attribute_targets
from curvlab.data.digits import load_digit_arrays


def test_each_digit_gets_its_attributes() -> None:
    labels = torch.arange(10)

    y = attribute_targets(labels, ["even", "ge5", "loop", "prime"])

    expected = {  # digit: (even, >= 5, loop, prime)
        0: (1, 0, 1, 0),
        1: (0, 0, 0, 0),
        2: (1, 0, 0, 1),
        3: (0, 0, 0, 1),
        4: (1, 0, 0, 0),
        5: (0, 1, 0, 1),
        6: (1, 1, 1, 0),
        7: (0, 1, 0, 1),
        8: (1, 1, 1, 0),
        9: (0, 1, 1, 0),
    }
    assert y.tolist() == [list(map(float, expected[d])) for d in range(10)]


def test_the_data_module_serves_the_chosen_columns_in_order() -> None:
    data = DigitAttributesDataModule(attributes=["prime", "ge5"])
    _, labels = load_digit_arrays()

    assert data.y.shape == (1797, 2) and data.num_labels == 2
    assert torch.equal(data.y[:, 1], (labels >= 5).float())
    assert data.y[:, 1].mean().item() == pytest.approx(0.5, abs=0.02)  # a balanced question


def test_unknown_or_repeated_names_are_refused() -> None:
    with pytest.raises(ValueError, match="even, ge5, loop, prime"):
        attribute_targets(torch.arange(3), ["odd"])
    with pytest.raises(ValueError, match="distinct"):
        attribute_targets(torch.arange(3), ["even", "even"])
