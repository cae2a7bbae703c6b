"""One curvature measurement of a model on a fixed batch: the figures the callback logs.

Every figure is built on Hessian-vector products H v = grad(g^T v) (guide 2.11, 3.7): the
sharpness lambda_max and the next eigenvalues by Lanczos, tr(H) by Hutchinson's estimator, the
curvature along the gradient g^T H g / ||g||^2, and the optimizer's stability figure. The
probe keeps the last eigenvectors, so that the next measurement starts Lanczos from them.
Under DDP each rank passes its shard of the batch and a ``reduce`` that all-reduces every
product (:func:`shard_sum_reduce`), so that all ranks hold the figures of the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from curvlab.callbacks.stability import StabilityRule
from curvlab.curvature import (
    BatchLike,
    Reduce,
    gradient_curvature,
    hessian_trace,
    top_eigenvalues,
)

FIGURES = ("lambda_max", "trace", "gradient_curvature", "stability")
"""What a measurement can compute; ``stability`` needs lambda_max (or its preconditioned kin)."""

Method = Literal["auto", "reverse", "forward"]


class CurvatureProbe:
    """Measures curvature figures, warm-starting each Lanczos run from the previous one.

    Args:
        figures: which of :data:`FIGURES` to compute.
        top_k: largest eigenvalues reported (``lambda_max`` first); algebraically largest, not
            by magnitude: near initialisation a negative eigenvalue can be the largest in
            magnitude, and it says nothing about step-size stability.
        max_iter: cap on Lanczos steps (one HVP each) per eigenvalue run.
        tol: Lanczos stops once every Ritz residual is at most ``tol * |lambda_max|``.
        trace_probes: Rademacher probes (one HVP each) of the Hutchinson trace.
        seed: seeds the start and probe vectors; the same on every rank and every measurement,
            so that successive trace estimates share their probes.
        warm_start: start Lanczos from the previous measurement's eigenvectors.
        method: HVP method: ``auto`` (the closed-form R-operator for curvlab's MLP and ViT,
            else the faster of the other two, timed once), ``rop``, ``reverse`` (double
            backward) or ``forward`` (forward-over-reverse).
    """

    def __init__(
        self,
        figures: Sequence[str] = FIGURES,
        top_k: int = 1,
        max_iter: int = 20,
        tol: float = 1e-3,
        trace_probes: int = 10,
        seed: int = 0,
        warm_start: bool = True,
        method: Method = "auto",
    ) -> None:
        unknown = sorted(set(figures) - set(FIGURES))
        if unknown:
            raise ValueError(f"unknown curvature figure(s) {unknown}; choose from {FIGURES}.")
        if top_k < 1 or max_iter < top_k or trace_probes < 1:
            raise ValueError(
                f"need top_k >= 1, max_iter >= top_k and trace_probes >= 1; got top_k={top_k}, "
                f"max_iter={max_iter}, trace_probes={trace_probes}."
            )
        self.figures = tuple(figures)
        self.top_k = top_k
        self.max_iter = max_iter
        self.tol = tol
        self.trace_probes = trace_probes
        self.seed = seed
        self.warm_start = warm_start
        self.method: Method = method
        self.eigenvectors: list[list[Tensor]] | None = None
        self.preconditioned_eigenvectors: list[list[Tensor]] | None = None

    def measure(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        batch: BatchLike,
        reduce: Reduce | None = None,
        rule: StabilityRule | None = None,
    ) -> dict[str, float]:
        """The figures at the model's current parameters, keyed by their MLflow names.

        Args:
            model: the unwrapped network (never the DDP wrapper).
            loss_fn: the training objective, ``loss_fn(model(x), y)``.
            batch: this rank's share of the measurement batch.
            reduce: combines each product across ranks (None in one process).
            rule: the optimizer's stability rule; None skips the stability figure.

        Returns:
            ``curvature/*`` figures; ``curvature/n_hvp`` counts the products spent.
        """
        out: dict[str, float] = {}
        n_hvp = 0
        common = dict(method=self.method, reduce=reduce)

        # lambda_max is needed for the stability of an optimizer that sees H itself.
        plain_stability = "stability" in self.figures and rule and rule.preconditioner is None
        if "lambda_max" in self.figures or plain_stability:
            eig = top_eigenvalues(
                model,
                loss_fn,
                batch,
                k=self.top_k,
                max_iter=self.max_iter,
                tol=self.tol,
                seed=self.seed,
                init=self.eigenvectors if self.warm_start else None,
                which="largest",
                **common,
            )
            self.eigenvectors = eig.eigenvectors
            n_hvp += eig.n_hvp
            out["curvature/lambda_max"] = float(eig.eigenvalues[0])
            for i, value in enumerate(eig.eigenvalues[1:].tolist(), start=2):
                out[f"curvature/lambda_{i}"] = value
            out["curvature/lanczos_iterations"] = float(eig.iterations)

        if "trace" in self.figures:
            trace = hessian_trace(
                model,
                loss_fn,
                batch,
                max_probes=self.trace_probes,
                min_probes=self.trace_probes,
                rtol=0.0,
                seed=self.seed,
                **common,
            )
            n_hvp += trace.num_probes
            out["curvature/trace"] = trace.trace
            out["curvature/trace_stderr"] = trace.stderr

        if "gradient_curvature" in self.figures:
            along_g = gradient_curvature(model, loss_fn, batch, **common)
            n_hvp += along_g.n_hvp
            out["curvature/gradient_curvature"] = along_g.curvature
            out["curvature/grad_norm"] = along_g.grad_norm

        if "stability" in self.figures and rule is not None:
            if rule.preconditioner is None:
                sharpness = out["curvature/lambda_max"]
            else:
                # The adaptive step sees P^{-1/2} H P^{-1/2}; its own warm start, as P moves H.
                pre = top_eigenvalues(
                    model,
                    loss_fn,
                    batch,
                    k=1,
                    max_iter=self.max_iter,
                    tol=self.tol,
                    seed=self.seed,
                    init=self.preconditioned_eigenvectors if self.warm_start else None,
                    preconditioner=rule.preconditioner,
                    which="largest",
                    **common,
                )
                self.preconditioned_eigenvectors = pre.eigenvectors
                n_hvp += pre.n_hvp
                sharpness = float(pre.eigenvalues[0])
                out["curvature/preconditioned_sharpness"] = sharpness
            out["curvature/stability_threshold"] = rule.threshold
            out["curvature/stability_ratio"] = sharpness / rule.threshold

        out["curvature/n_hvp"] = float(n_hvp)
        return out


def shard(batch: tuple[Tensor, Tensor], rank: int, world_size: int) -> tuple[Tensor, Tensor]:
    """Rank ``rank``'s contiguous share of ``batch``; the shares of all ranks make it whole."""
    x, y = batch
    if len(x) < world_size:
        raise ValueError(
            f"the measurement batch has {len(x)} examples for {world_size} processes; raise "
            "data.measurement_size to at least the number of processes."
        )
    rows = torch.tensor_split(torch.arange(len(x)), world_size)[rank]
    return x[rows], y[rows]


def shard_sum_reduce(weight: float, group: dist.ProcessGroup | None = None) -> Reduce:
    """An all-reduce of ``weight * tensors``, with ``weight`` this rank's share of the batch.

    For a mean-reduced loss, the product over the whole batch is the sum over ranks of each
    shard's product weighted by its share of the examples: one collective per product, and
    exact for shards of unequal size (where a plain mean over ranks would not be).
    """

    def reduce(tensors: list[Tensor]) -> list[Tensor]:
        flat = torch.cat([t.reshape(-1) for t in tensors]) * weight
        dist.all_reduce(flat, group=group)
        pieces = flat.split([t.numel() for t in tensors])
        return [piece.view_as(t) for piece, t in zip(pieces, tensors, strict=True)]

    return reduce
