"""The largest-magnitude Hessian eigenvalues (sharpness) by Lanczos, plain or preconditioned.

lambda_max of H bounds the step sizes at which gradient descent is stable (eta < 2 /
lambda_max); for an adaptive method the relevant matrix is P^{-1/2} H P^{-1/2}, with P the
optimizer's diagonal preconditioner (see :func:`adam_preconditioner`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from curvlab.curvature._support import (
    BatchLike,
    LossFn,
    Reduce,
    flatten,
    make_generator,
    measurement_mode,
    unflatten,
)
from curvlab.curvature.lanczos import Tridiagonal, lanczos
from curvlab.curvature.operators import GGNOperator, HessianOperator, Method

# Weight of a random direction mixed into a warm start: large enough that Lanczos still sees
# every eigendirection (a stale eigenvector may no longer be the top one), small enough to
# keep most of the head start.
_WARM_START_NOISE = 0.1


@dataclass
class EigenResult:
    """Top eigenpairs of a curvature matrix.

    Attributes:
        eigenvalues: (k,) float64, largest magnitude first.
        eigenvectors: k unit vectors, each one tensor per trainable parameter; with a
            preconditioner, eigenvectors of P^{-1/2} H P^{-1/2}.
        residuals: (k,) float64 Lanczos bounds on ||A y - lambda y||.
        iterations: Lanczos steps taken.
        n_hvp: curvature products spent.
        converged: every residual met the tolerance before the iteration cap.
    """

    eigenvalues: Tensor
    eigenvectors: list[list[Tensor]]
    residuals: Tensor
    iterations: int
    n_hvp: int
    converged: bool


def top_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    batch: BatchLike,
    k: int = 1,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    init: Sequence[Sequence[Tensor]] | None = None,
    preconditioner: Sequence[Tensor] | None = None,
    curvature: Literal["hessian", "ggn"] = "hessian",
    method: Method = "auto",
    reduce: Reduce | None = None,
    which: Literal["magnitude", "largest"] = "magnitude",
) -> EigenResult:
    """The k largest-magnitude eigenvalues of H (or G) and their eigenvectors, by Lanczos.

    Args:
        model: the network; trainable parameters only.
        loss_fn: the loss is ``loss_fn(model(inputs), targets)``, mean-reduced.
        batch: an ``(inputs, targets)`` pair or a list of them.
        k: how many eigenpairs.
        max_iter: cap on Lanczos steps (one product each). The basis holds up to ``max_iter``
            flat copies of the parameters.
        tol: stop once every Ritz residual bound is at most ``tol * |lambda_max|``.
        seed: seeds the private generator of the start vector (identical on all ranks).
        init: previous eigenvectors to warm start from (e.g. ``result.eigenvectors``).
        preconditioner: per-parameter positive diagonals P; the iteration then runs on
            P^{-1/2} H P^{-1/2}, whose eigenvalues are those of P^{-1} H.
        curvature: ``hessian`` (exact H) or ``ggn`` (Gauss-Newton G).
        method: HVP method for the Hessian, see :func:`curvlab.curvature.hvp`.
        reduce: applied to every product, e.g. :func:`ddp_mean_reduce`.
        which: rank eigenvalues by ``magnitude`` or take the ``largest`` (algebraically): the
            sharpness, which a larger negative eigenvalue would hide by magnitude.

    Returns:
        An :class:`EigenResult`.
    """
    with measurement_mode(model):
        if curvature == "hessian":
            op = HessianOperator(model, loss_fn, batch, method, reduce)
        else:
            op = GGNOperator(model, loss_fn, batch, reduce)
        params = op.params
        n = sum(p.numel() for p in params)
        if not 1 <= k <= n:
            raise ValueError(f"k={k} must be between 1 and the number of parameters ({n}).")

        # A = S H S with S = P^{-1/2}: symmetric, so Lanczos applies, and similar to P^{-1} H.
        s = flatten(preconditioner).rsqrt() if preconditioner is not None else None

        def matvec(x: Tensor) -> Tensor:
            if s is None:
                return op.matvec_flat(x).detach()
            return s * op.matvec_flat(s * x).detach()

        generator = make_generator(seed, params[0].device)
        q1 = _start_vector(params, init, generator)

        def converged(t: Tridiagonal) -> bool:
            if len(t.alpha) < k:
                return False
            theta, _, res = _top_ritz(t, k, which)
            return bool((res <= tol * theta.abs().max().clamp_min(1e-30)).all())

        t = lanczos(matvec, q1, max_iter, generator, converged)
        theta, vectors, res = _top_ritz(t, k, which)
        eigenvectors = [unflatten(y, params) for y in vectors.T.contiguous()]
        return EigenResult(
            eigenvalues=theta,
            eigenvectors=eigenvectors,
            residuals=res,
            iterations=len(t.alpha),
            n_hvp=op.n_products,
            converged=converged(t),
        )


def _start_vector(
    params: list[Tensor], init: Sequence[Sequence[Tensor]] | None, generator: torch.Generator
) -> Tensor:
    like = params[0]
    n = sum(p.numel() for p in params)
    r = torch.randn(n, generator=generator, device=like.device, dtype=like.dtype)
    if not init:
        return r
    q = sum(flatten(v).to(like.dtype) / flatten(v).norm() for v in init)
    return q / q.norm() + _WARM_START_NOISE * r / r.norm()


def _top_ritz(t: Tridiagonal, k: int, which: str = "magnitude") -> tuple[Tensor, Tensor, Tensor]:
    """Top-k Ritz values by magnitude, their vectors (n, k) and residual bounds."""
    theta, s = t.ritz()
    order = (theta.abs() if which == "magnitude" else theta).argsort(descending=True)[:k]
    residuals = (t.beta_next * s[-1, order]).abs()
    vectors = t.basis.T @ s[:, order].to(t.basis)  # T lives on the CPU in float64
    return theta[order], vectors, residuals


def adam_preconditioner(
    optimizer: torch.optim.Optimizer, params: Sequence[Tensor]
) -> list[Tensor]:
    """Adam's diagonal preconditioner P = sqrt(v_hat) + eps for each of ``params``.

    Adam (guide 1.3.5) steps theta <- theta - eta P^{-1} m_hat with v_hat = v_t / (1 -
    beta_2^t) read from ``exp_avg_sq``; so the sharpness that governs its stability is
    lambda_max(P^{-1} H), to be compared with eta: with momentum beta_1 the edge of stability
    is at (2 + 2 beta_1) / ((1 - beta_1) eta) (Cohen et al., 2022, "Adaptive gradient methods
    at the edge of stability"). The learning rate is left out of P. Pass the result as
    ``top_eigenvalues(..., preconditioner=P)``.

    Raises:
        ValueError: a parameter has no Adam state yet (before the first step).
    """
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    out = []
    for p in params:
        state = optimizer.state.get(p, {})
        if "exp_avg_sq" not in state or id(p) not in group_of:
            raise ValueError(
                "adam_preconditioner: a parameter has no Adam state (exp_avg_sq); call it "
                "after the optimizer's first step, with the optimizer that owns the parameters."
            )
        group = group_of[id(p)]
        step = float(state["step"])
        v_hat = state["exp_avg_sq"] / (1 - group["betas"][1] ** step)
        out.append(v_hat.sqrt() + group["eps"])
    return out
