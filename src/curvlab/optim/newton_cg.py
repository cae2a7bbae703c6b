"""Newton-CG (Hessian-free) optimisation: guide section 2.11.5 and Martens (2010).

Each step solves the damped Newton system (B + lambda I) p = -g by conjugate gradient, where
B is the Gauss-Newton matrix G (positive semi-definite) or the exact Hessian H, reached only
through curvature-vector products (guide 2.11), then moves theta <- theta + lr p. CG stops on
a relative residual, on Martens' relative-progress rule or on an iteration cap, and starts
from a fraction of the previous step's solution. The damping lambda follows the
Levenberg-Marquardt rule on the reduction ratio rho = (f(theta + p) - f(theta)) / q(p), with q
the quadratic model g^T p + 1/2 p^T B p.

Closure contract: the optimizer is built with the model and the loss function; before each
``step(closure)`` it is told the batch with :meth:`NewtonCG.set_batch`. The closure zeroes
the gradients, runs forward and backward and returns the loss (what Lightning's automatic
optimisation passes); ``p.grad`` after it is g, already averaged by DDP. Curvature products
and the loss at the trial point are taken on the unwrapped model with ``loss_fn`` on that
batch, in eval mode, and averaged across ranks by ``reduce``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from curvlab.curvature._support import (
    BatchLike,
    LossFn,
    Reduce,
    as_batches,
    flatten,
    measurement_mode,
    resolve_reduce,
    trainable_params,
    unflatten,
)
from curvlab.curvature.operators import GGNOperator, HessianOperator, Method

log = logging.getLogger(__name__)


@dataclass
class CGResult:
    """Outcome of :func:`conjugate_gradient`.

    Attributes:
        x: the approximate solution.
        r: the residual b - A x.
        iterations: products A d taken (a warm start costs one more).
        reason: ``residual``, ``progress``, ``max_iter`` or ``negative_curvature``.
        phi: the quadratic 1/2 x^T A x - b^T x at ``x``.
    """

    x: Tensor
    r: Tensor
    iterations: int
    reason: str
    phi: float


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    x0: Tensor | None = None,
    max_iter: int = 50,
    tol: float = 1e-6,
    progress_tol: float = 5e-4,
) -> CGResult:
    """Minimise phi(x) = 1/2 x^T A x - b^T x, i.e. solve A x = b, for symmetric A.

    In exact arithmetic CG solves an n-dimensional positive definite system in at most n
    iterations.

    Args:
        matvec: x -> A x on flat vectors.
        b: right-hand side.
        x0: warm start; dropped if phi(x0) >= 0 = phi(0).
        max_iter: cap on products A d.
        tol: stop when ||r|| <= tol * ||b||.
        progress_tol: Martens' rule: stop at iteration i once phi < 0 and
            (phi_i - phi_{i-k}) / phi_i < k * progress_tol, with k = max(10, i / 10).
    """
    x = torch.zeros_like(b)
    r = b.clone()
    if x0 is not None and x0.abs().sum() > 0:
        r0 = b - matvec(x0)
        if -0.5 * torch.dot(x0, r0 + b) < 0:
            x, r = x0.clone(), r0

    # phi(x) = -1/2 x^T (r + b) follows from r = b - A x, so tracking it costs no product.
    phis = [float(-0.5 * torch.dot(x, r + b))]
    d = r.clone()
    rr = torch.dot(r, r)
    b_norm = b.norm()
    reason, i = "max_iter", 0

    while i < max_iter:
        if rr.sqrt() <= tol * b_norm:
            reason = "residual"
            break

        ad = matvec(d)
        i += 1
        d_ad = torch.dot(d, ad)
        if d_ad <= 0:
            # Negative curvature (exact Hessian): stop; from zero, fall back to steepest descent.
            reason = "negative_curvature"
            if phis[-1] == 0.0:
                x, r = b.clone(), b - matvec(b)
            break

        step = rr / d_ad
        x.add_(d, alpha=float(step))
        r.sub_(ad, alpha=float(step))
        rr_new = torch.dot(r, r)
        d = r + (rr_new / rr) * d
        rr = rr_new

        phis.append(float(-0.5 * torch.dot(x, r + b)))
        k = max(10, i // 10)
        if i > k and phis[-1] < 0 and (phis[-1] - phis[-1 - k]) / phis[-1] < k * progress_tol:
            reason = "progress"
            break

    return CGResult(x, r, i, reason, float(-0.5 * torch.dot(x, r + b)))


@dataclass
class NewtonCGStats:
    """What the last step did, for logging: losses, ratio, damping and CG effort."""

    loss: float
    trial_loss: float
    rho: float
    damping: float
    cg_iterations: int
    cg_reason: str
    accepted: bool


class NewtonCG(torch.optim.Optimizer):
    """Newton-CG / Hessian-free optimiser with Levenberg-Marquardt damping (guide 2.11.5).

    Args:
        params: the model's trainable parameters (one group).
        model: the unwrapped network whose curvature is used (not the DDP wrapper).
        loss_fn: mean-reduced ``loss_fn(model(inputs), targets)``, the training objective.
        lr: scale on the CG solution p; 1 takes the damped Newton step.
        damping: initial lambda added to the curvature.
        curvature: ``ggn`` (Gauss-Newton, PSD) or ``hessian`` (exact HVPs, may be indefinite).
        max_cg_iter: cap on CG iterations (curvature products) per step.
        cg_tol: CG stops when ||r|| <= cg_tol * ||g||.
        progress_tol: epsilon of Martens' relative-progress rule.
        warm_start: CG starts from this multiple of the previous solution (0: from zero).
        adapt_damping: Levenberg-Marquardt: lambda * 3/2 if rho < 1/4, * 2/3 if rho > 3/4.
        min_damping: lower bound on the adapted lambda.
        max_damping: upper bound on the adapted lambda.
        weight_decay: L2 coefficient mu; the objective gains mu/2 ||theta||^2.
        reject_increase: undo a step that raised the batch objective (lambda still grows).
        hvp_method: product method for ``curvature="hessian"``.
        reduce: ``auto`` averages products and losses over the default process group when
            one is up; or a callable, or None.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        model: nn.Module,
        loss_fn: LossFn,
        lr: float = 1.0,
        damping: float = 0.1,
        curvature: Literal["ggn", "hessian"] = "ggn",
        max_cg_iter: int = 50,
        cg_tol: float = 1e-6,
        progress_tol: float = 5e-4,
        warm_start: float = 0.95,
        adapt_damping: bool = True,
        min_damping: float = 1e-6,
        max_damping: float = 1e6,
        weight_decay: float = 0.0,
        reject_increase: bool = True,
        hvp_method: Method = "reverse",
        reduce: Reduce | Literal["auto"] | None = "auto",
    ) -> None:
        if curvature not in ("ggn", "hessian"):
            raise ValueError(f"optimizer.curvature={curvature!r}; choose ggn or hessian.")
        defaults = dict(
            lr=lr,
            damping=damping,
            max_cg_iter=max_cg_iter,
            cg_tol=cg_tol,
            progress_tol=progress_tol,
            warm_start=warm_start,
            adapt_damping=adapt_damping,
            min_damping=min_damping,
            max_damping=max_damping,
            weight_decay=weight_decay,
            reject_increase=reject_increase,
        )
        super().__init__(params, defaults)
        self.model = model
        self.loss_fn = loss_fn
        self.curvature = curvature
        self.hvp_method = hvp_method
        self.reduce = resolve_reduce(reduce)
        self.batch: BatchLike | None = None
        self.last: NewtonCGStats | None = None

        # Products come back in the model's parameter order; the optimizer must own exactly
        # those parameters so that g and p line up with them.
        self._params = trainable_params(model)
        owned = [p for group in self.param_groups for p in group["params"]]
        if len(self.param_groups) != 1 or {id(p) for p in owned} != {id(p) for p in self._params}:
            raise ValueError(
                "NewtonCG needs one parameter group holding exactly the trainable parameters "
                "of `model` (pass the unwrapped network whose parameters are optimised)."
            )

    def set_batch(self, batch: BatchLike) -> None:
        """The batch whose curvature and trial loss the next step uses (call before step)."""
        self.batch = batch

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """One Newton-CG step; ``closure`` recomputes the loss and its gradient (backward).

        Returns:
            The loss the closure returned.
        """
        if closure is None or self.batch is None:
            raise ValueError(
                "NewtonCG.step needs a closure that runs forward and backward and returns the "
                "loss, and a batch given by set_batch(batch) before the step."
            )
        # TODO(newton-cg): Lightning's gradient accumulation and mixed precision are not
        # handled: the closure's .grad would cover several batches (or be scaled) while the
        # curvature covers only the last set_batch batch.
        with torch.enable_grad():
            loss = closure()

        group = self.param_groups[0]
        first = self.state[self._params[0]]
        lam = first.get("damping", group["damping"])
        mu, lr = group["weight_decay"], group["lr"]

        with measurement_mode(self.model):
            theta = flatten([p.detach() for p in self._params])
            g = flatten([_grad_or_zero(p) for p in self._params]) + mu * theta
            f0, cg = self._solve(theta, g, lam, group)

            # q(lr p) = lr g^T p + lr^2/2 p^T (B + mu) p, where CG gives p^T A p = -p^T (g + r).
            p_dir = cg.x
            p_b_p = -torch.dot(p_dir, g + cg.r) - lam * torch.dot(p_dir, p_dir)
            q = float(lr * torch.dot(g, p_dir) + 0.5 * lr**2 * p_b_p)

            self._assign(theta + lr * p_dir)
            f1 = self._objective(theta + lr * p_dir, self._batch_loss())
            rho = (f1 - f0) / q if q < 0 and math.isfinite(f1) else -math.inf
            accepted = f1 < f0 or not group["reject_increase"]
            if not accepted:
                self._assign(theta)

        if group["adapt_damping"]:
            # Levenberg-Marquardt: trust the quadratic model more when it predicted well.
            factor = 1.5 if rho < 0.25 else (2 / 3 if rho > 0.75 else 1.0)
            lam = min(max(lam * factor, group["min_damping"]), group["max_damping"])
        first["damping"] = lam
        first["step"] = first.get("step", 0) + 1
        for param, d in zip(self._params, unflatten(p_dir, self._params), strict=True):
            self.state[param]["direction"] = d.clone()

        self.last = NewtonCGStats(f0, f1, rho, lam, cg.iterations, cg.reason, accepted)
        log.debug("newton_cg step: %s", self.last)
        return loss

    def _solve(self, theta: Tensor, g: Tensor, lam: float, group: dict) -> tuple[float, CGResult]:
        """f(theta) and the CG solution of (B + mu I + lambda I) p = -g."""
        op = self._operator()
        mu = group["weight_decay"]

        def damped(x: Tensor) -> Tensor:
            return op.matvec_flat(x) + (mu + lam) * x

        # Consecutive Newton systems are alike, so the previous solution is a good start.
        previous = [self.state[p].get("direction") for p in self._params]
        x0 = None
        if group["warm_start"] > 0 and all(d is not None for d in previous):
            x0 = group["warm_start"] * flatten(previous)

        cg = conjugate_gradient(
            damped, -g, x0, group["max_cg_iter"], group["cg_tol"], group["progress_tol"]
        )
        return self._objective(theta, op.loss()), cg

    def _operator(self) -> GGNOperator | HessianOperator:
        with torch.enable_grad():
            if self.curvature == "ggn":
                return GGNOperator(self.model, self.loss_fn, self.batch, self.reduce)
            return HessianOperator(
                self.model, self.loss_fn, self.batch, self.hvp_method, self.reduce
            )

    def _assign(self, theta: Tensor) -> None:
        with torch.no_grad():
            for param, value in zip(self._params, unflatten(theta, self._params), strict=True):
                param.copy_(value)

    def _batch_loss(self) -> Tensor:
        device = self._params[0].device
        with torch.no_grad():
            return sum(
                w * self.loss_fn(self.model(x), y) for x, y, w in as_batches(self.batch, device)
            )

    def _objective(self, theta: Tensor, loss: Tensor) -> float:
        """f(theta) + mu/2 ||theta||^2 on the batch, f averaged across ranks."""
        if self.reduce is not None:
            loss = self.reduce([loss.reshape(1)])[0][0]
        mu = self.param_groups[0]["weight_decay"]
        return float(loss) + 0.5 * mu * float(torch.dot(theta, theta))


def _grad_or_zero(p: Tensor) -> Tensor:
    return p.grad.detach() if p.grad is not None else torch.zeros_like(p)
