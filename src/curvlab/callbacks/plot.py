"""The end-of-run figure: sharpness against steps with the stability line, beside the loss."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, MaxNLocator, NullLocator


def plot_sharpness(
    records: Sequence[Mapping[str, float]],
    losses: Sequence[tuple[int, float]],
    path: Path,
    optimizer: str | None = None,
    source: str = "measurement batch",
) -> Path:
    """Write a PNG: lambda_max (and preconditioned sharpness) with the threshold, and the loss.

    Args:
        records: one mapping per measurement with ``step`` and ``curvature/*`` figures.
        losses: ``(step, training loss)`` pairs.
        path: where the PNG goes; its folder is created.
        optimizer: the stability rule's optimizer name, for the threshold's label.
        source: what the figures were measured on, for the title.

    Returns:
        ``path``.
    """
    # A bare Figure renders without pyplot, so no global backend or figure registry is touched;
    # fixed margins instead of a layout engine make it render in a third of the time.
    fig = Figure(figsize=(11, 4))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.91, wspace=0.22)
    left, right = fig.subplots(1, 2)
    steps = [r["step"] for r in records]

    drawn: list[float] = []
    for key, label in (
        ("curvature/lambda_max", "λ_max of H"),
        ("curvature/preconditioned_sharpness", "λ_max of P^-1/2 H P^-1/2"),
    ):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            left.plot(*zip(*points, strict=True), marker=".", label=label)
            drawn += [value for _, value in points]
    threshold = [
        (s, r["curvature/stability_threshold"])
        for s, r in zip(steps, records, strict=True)
        if "curvature/stability_threshold" in r
    ]
    if threshold:
        name = "2 / η" if optimizer == "sgd" else f"{optimizer} stability threshold"
        left.step(*zip(*threshold, strict=True), where="post", ls="--", c="k", label=name)
        drawn += [value for _, value in threshold]
    # An adaptive optimizer's preconditioned figures lie orders of magnitude above H's.
    if drawn and min(drawn) > 0 and max(drawn) > 20 * min(drawn):
        _log_scale(left)
    left.set(xlabel="step", ylabel="sharpness", title=f"Sharpness on the {source}")
    if drawn:
        left.legend(loc="best")

    if losses:
        loss_steps, values = zip(*losses, strict=True)
        right.plot(loss_steps, values, lw=1)
        # A log scale only where the loss spans more than a decade.
        if min(values) > 0 and max(values) > 10 * min(values):
            _log_scale(right)
    right.set(xlabel="step", ylabel="training loss", title="Training loss")
    for axes in (left, right):
        axes.xaxis.set_major_locator(MaxNLocator(6, integer=True, steps=[1, 2, 2.5, 5, 10]))

    path.parent.mkdir(parents=True, exist_ok=True)
    # zlib's fastest level: a tenth of the drawing time saved for a fifth more bytes.
    fig.savefig(path, dpi=110, pil_kwargs={"compress_level": 1})
    return path


def _log_scale(axes: Axes) -> None:
    """A log y axis with plain-number labels (0.01) and no minor ticks.

    Minor ticks and matplotlib's mathtext labels (10^k) were two thirds of the drawing time.
    """
    axes.set_yscale("log")
    axes.yaxis.set_minor_locator(NullLocator())
    axes.yaxis.set_major_formatter(FormatStrFormatter("%g"))
