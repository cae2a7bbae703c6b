"""Plain-text tables of the worked examples, and the dispatch from an ``example`` config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from curvlab.guide.network import NetworkSpec
from curvlab.guide.rows import Walkthrough
from curvlab.guide.scalar_examples import chain_rule_accumulation, quadratic_hvp
from curvlab.guide.walkthrough import walk

KINDS = ("network", "chain_rule", "hvp")


def format_number(v: float) -> str:
    """Six decimals as the guide prints them; scientific notation below 1e-4 or from 1e6."""
    if v == 0 or 1e-4 <= abs(v) < 1e6:
        return f"{v:.6f}"
    return f"{v:.6e}"


def format_value(value: torch.Tensor | None) -> str:
    """A scalar as a number, a vector as ``(a, b)``, a matrix as ``[[a, b], [c, d]]``."""
    if value is None:
        return "-"
    if value.numel() == 1:
        return format_number(float(value))
    if value.dim() == 1:
        return "(" + ", ".join(format_number(float(v)) for v in value) + ")"
    rows = ("[" + ", ".join(format_number(float(v)) for v in row) + "]" for row in value)
    return "[" + ", ".join(rows) + "]"


def format_walkthrough(result: Walkthrough) -> str:
    """The table under its title, one block per section, and the cross-check line."""
    header = ["Step", "Quantity", "Expression", "Value"]
    with_notes = any(row.note for row in result.rows)
    if with_notes:
        header.append("Note")

    cells = [
        [str(r.step), r.quantity, r.expression, format_value(r.value), r.note or "-"][
            : len(header)
        ]
        for r in result.rows
    ]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]

    def line(parts: list[str]) -> str:
        return "  ".join(p.ljust(w) for p, w in zip(parts, widths, strict=True)).rstrip()

    out = [result.title, "", line(header), line(["-" * w for w in widths])]
    section = None
    for row, parts in zip(result.rows, cells, strict=True):
        # A section title precedes its first row, as the guide's bold table rows do.
        if row.section != section:
            section = row.section
            out.append(f"[{section}]")
        out.append(line(parts))

    diffs = result.diffs()
    out += [
        "",
        f"Cross-check against {result.reference_name}: {len(diffs)} quantities, "
        f"max |autograd - formula| = {result.max_abs_diff:.1e}",
    ]
    return "\n".join(out)


def run_example(example: Mapping[str, Any]) -> Walkthrough:
    """Compute the worked example an ``example`` config describes.

    Args:
        example: ``kind`` (``network``, ``chain_rule`` or ``hvp``) and that kind's settings;
            see the files of ``curvlab/guide/conf/example``.

    Returns:
        The computed table.
    """
    kind = example.get("kind", "network")
    if kind == "network":
        spec = NetworkSpec.from_config(example)
        return walk(
            spec,
            layout=example.get("layout", "chronological"),
            jacobians=bool(example.get("jacobians", True)),
            input_grad=bool(example.get("input_grad", False)),
            title=example.get("title", ""),
        )
    if kind == "chain_rule":
        return chain_rule_accumulation(float(example.get("x", 3.0)))
    if kind == "hvp":
        return quadratic_hvp(example.get("w", (1.0, 2.0)), example.get("u", (1.0, -1.0)))
    raise ValueError(f"example.kind: {kind!r} is not one of {', '.join(KINDS)}.")
