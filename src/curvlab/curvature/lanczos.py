"""The Lanczos iteration on flat vectors, shared by the eigenvalue and density estimators.

Lanczos builds an orthonormal basis Q of the Krylov space {q1, A q1, A^2 q1, ...} of a
symmetric A, one product A q per step, in which A is the tridiagonal matrix T (alpha on the
diagonal, beta beside it). The eigenvalues of T (Ritz values) approach A's extreme eigenvalues
first; |beta_m * s_{m,i}| bounds the residual ||A y_i - theta_i y_i|| of Ritz pair i.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Tridiagonal:
    """The outcome of m Lanczos steps.

    Attributes:
        alpha: (m,) diagonal of T, float64.
        beta: (m - 1,) off-diagonal of T, float64 (0 where the iteration restarted).
        basis: (m, n) rows q_1..q_m, orthonormal.
        beta_next: the norm of the last residual, which bounds the Ritz residuals.
    """

    alpha: Tensor
    beta: Tensor
    basis: Tensor
    beta_next: float

    def ritz(self) -> tuple[Tensor, Tensor]:
        """Eigenvalues theta (ascending) and eigenvectors S of T, float64."""
        t = torch.diag(self.alpha)
        if len(self.beta):
            t += torch.diag(self.beta, 1) + torch.diag(self.beta, -1)
        return torch.linalg.eigh(t)


StopRule = Callable[[Tridiagonal], bool]


def lanczos(
    matvec: Callable[[Tensor], Tensor],
    q1: Tensor,
    max_steps: int,
    generator: torch.Generator,
    stop: StopRule | None = None,
) -> Tridiagonal:
    """Run up to ``max_steps`` Lanczos steps from ``q1`` with full reorthogonalisation.

    Args:
        matvec: v -> A v on flat vectors, A symmetric.
        q1: the start vector (normalised here).
        max_steps: cap on products; also capped by the dimension n.
        generator: draws a fresh direction if the Krylov space becomes invariant early.
        stop: called after each step with the current T; returning True ends the iteration.

    Returns:
        The tridiagonal T, the basis Q and the last residual norm.
    """
    n = q1.numel()
    max_steps = min(max_steps, n)
    # A residual this small relative to ||A|| means the Krylov space is invariant.
    breakdown = 1e3 * torch.finfo(q1.dtype).eps
    basis = [q1 / q1.norm()]
    alpha: list[float] = []
    beta: list[float] = []
    scale = 0.0

    while True:
        q = basis[-1]
        w = matvec(q)
        alpha.append(float(torch.dot(w, q)))

        # Projecting out the whole basis (twice) covers the three-term recurrence and keeps Q
        # orthonormal in floating point, so converged eigenvalues do not reappear as ghosts.
        stacked = torch.stack(basis)
        for _ in range(2):
            w = w - stacked.T @ (stacked @ w)
        b = float(w.norm())
        scale = max(scale, abs(alpha[-1]), b)

        result = _tridiagonal(alpha, beta, stacked, b)
        if len(basis) == max_steps or (stop is not None and stop(result)):
            return result

        if b <= breakdown * scale:
            # Invariant subspace found: continue in a random direction orthogonal to it.
            w = torch.randn(n, generator=generator, device=q.device, dtype=q.dtype)
            for _ in range(2):
                w = w - stacked.T @ (stacked @ w)
            beta.append(0.0)
            basis.append(w / w.norm())
        else:
            beta.append(b)
            basis.append(w / b)


def _tridiagonal(alpha: list[float], beta: list[float], basis: Tensor, b: float) -> Tridiagonal:
    as64 = dict(dtype=torch.float64)
    return Tridiagonal(torch.tensor(alpha, **as64), torch.tensor(beta, **as64), basis, b)
