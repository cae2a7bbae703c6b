"""The end-of-run figure: sharpness against steps with the stability line, beside the loss."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure


def plot_sharpness(
    records: Sequence[Mapping[str, float]],
    losses: Sequence[tuple[int, float]],
    path: Path,
    optimizer: str | None = None,
) -> Path:
    """Write a PNG: lambda_max (and preconditioned sharpness) with the threshold, and the loss.

    Args:
        records: one mapping per measurement with ``step`` and ``curvature/*`` figures.
        losses: ``(step, training loss)`` pairs.
        path: where the PNG goes; its folder is created.
        optimizer: the stability rule's optimizer name, for the threshold's label.

    Returns:
        ``path``.
    """
    # A bare Figure renders without pyplot, so no global backend or figure registry is touched.
    fig = Figure(figsize=(11, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    steps = [r["step"] for r in records]

    for key, label in (
        ("curvature/lambda_max", "λ_max of H"),
        ("curvature/preconditioned_sharpness", "λ_max of P^-1/2 H P^-1/2"),
    ):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            left.plot(*zip(*points, strict=True), marker=".", label=label)
    threshold = [
        (s, r["curvature/stability_threshold"])
        for s, r in zip(steps, records, strict=True)
        if "curvature/stability_threshold" in r
    ]
    if threshold:
        name = "2 / η" if optimizer == "sgd" else f"{optimizer} stability threshold"
        left.step(*zip(*threshold, strict=True), where="post", ls="--", c="k", label=name)
    left.set(xlabel="step", ylabel="sharpness", title="Sharpness on the measurement batch")
    left.legend(loc="best")

    if losses:
        left_steps, values = zip(*losses, strict=True)
        right.plot(left_steps, values, lw=1)
        if min(values) > 0:
            right.set_yscale("log")
    right.set(xlabel="step", ylabel="training loss", title="Training loss")

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
