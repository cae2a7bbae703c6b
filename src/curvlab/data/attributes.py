"""Binary and multi-label targets derived from the digits: properties of the digit shown.

Each attribute is a set of digit classes; an image's target is 1 for every attribute whose set
holds its label. One attribute gives a binary task ("is this digit >= 5"), several give a
multi-hot target per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from curvlab.data.arrays import ArrayDataModule
from curvlab.data.digits import load_digit_arrays

# The digit classes with each property. "loop" follows the usual handwritten forms, where a 4 is
# drawn open at the top (as most 4s in scikit-learn's digits are).
DIGIT_ATTRIBUTES: dict[str, frozenset[int]] = {
    "even": frozenset({0, 2, 4, 6, 8}),
    "ge5": frozenset({5, 6, 7, 8, 9}),
    "loop": frozenset({0, 6, 8, 9}),
    "prime": frozenset({2, 3, 5, 7}),
}


def attribute_targets(labels: torch.Tensor, attributes: Sequence[str]) -> torch.Tensor:
    """Multi-hot targets ``(n, A)`` float32: 1 where the digit has attribute ``a``.

    Args:
        labels: ``(n,)`` digit classes 0..9.
        attributes: names from :data:`DIGIT_ATTRIBUTES`, one target column each.

    Raises:
        ValueError: for an unknown or repeated attribute name, or none at all.
    """
    unknown = [name for name in attributes if name not in DIGIT_ATTRIBUTES]
    if unknown or not attributes or len(set(attributes)) != len(attributes):
        raise ValueError(
            f"data.attributes={list(attributes)} is not valid: give one or more distinct names "
            f"from {', '.join(DIGIT_ATTRIBUTES)}."
        )
    columns = [
        torch.isin(labels, torch.tensor(sorted(DIGIT_ATTRIBUTES[name]))) for name in attributes
    ]
    return torch.stack(columns, dim=1).to(torch.float32)


class DigitAttributesDataModule(ArrayDataModule):
    """The digits with attribute targets instead of their class.

    Args:
        attributes: target columns, in order, from :data:`DIGIT_ATTRIBUTES`.
        **kwargs: batch size, split fractions and seeds, as for :class:`ArrayDataModule`.
    """

    def __init__(self, attributes: Sequence[str] = ("ge5",), **kwargs: object) -> None:
        x, labels = load_digit_arrays()
        y = attribute_targets(labels, list(attributes))
        super().__init__(x, y, **kwargs)
        self.attributes = list(attributes)
        self.num_labels = len(self.attributes)
