"""The rows of a worked example's table, and the two computations they are checked against."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Row:
    """One line of a guide table.

    Attributes:
        step: the step number, counted from 1 through the whole table as the guide does.
        section: the block the row belongs to ("Forward pass", "Backward pass", ...).
        symbol: a key unique within the table, used to look the row up.
        quantity: what the row computes, in the table's words.
        expression: the formula, in plain text.
        value: the number (a 0-d, vector or matrix float64 tensor), or None for a rule.
        note: the Jacobian role or where the value comes from; may be empty.
    """

    step: int
    section: str
    symbol: str
    quantity: str
    expression: str
    value: torch.Tensor | None
    note: str = ""


@dataclass
class Walkthrough:
    """A worked example: its table, and the same quantities computed two independent ways.

    Attributes:
        title: a heading naming the guide section.
        rows: the table in chronological order.
        values: every quantity as autograd computed it.
        reference: the quantities derived again from explicit formulas (no autograd).
        reference_name: what produced ``reference``, for the printed cross-check line.
    """

    title: str
    rows: list[Row]
    values: dict[str, torch.Tensor]
    reference: dict[str, torch.Tensor] = field(default_factory=dict)
    reference_name: str = "explicit formulas"

    def row(self, symbol: str) -> Row:
        """The row whose symbol is ``symbol``."""
        for row in self.rows:
            if row.symbol == symbol:
                return row
        raise KeyError(f"no row {symbol!r}; rows are {[r.symbol for r in self.rows]}")

    def diffs(self) -> dict[str, float]:
        """max |autograd - reference| for every quantity both computations produced.

        A quantity whose shapes differ counts as infinitely far apart, so that broadcasting
        cannot hide a wrong layout.
        """
        return {
            key: (
                float((self.values[key] - ref).abs().max())
                if self.values[key].shape == ref.shape
                else float("inf")
            )
            for key, ref in self.reference.items()
            if key in self.values
        }

    @property
    def max_abs_diff(self) -> float:
        """The largest disagreement between autograd and the reference formulas."""
        return max(self.diffs().values(), default=0.0)
