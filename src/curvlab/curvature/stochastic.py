"""Randomised spectral estimates: Hutchinson's trace and stochastic Lanczos quadrature.

Both draw probe vectors z from a private generator seeded by an argument, so the global RNG
is untouched and all DDP ranks probe the same directions. Hutchinson: for Rademacher z
(entries +-1), E[z^T H z] = tr(H). Stochastic Lanczos quadrature (Ubaru, Chen and Saad,
2017): m Lanczos steps from a unit probe q give Ritz values theta_j and weights
tau_j = s_{1,j}^2 with q^T f(H) q ~ sum_j tau_j f(theta_j) (exact for polynomials of degree
< 2m); averaging over probes estimates the eigenvalue density (1/n) sum_i delta(t - lambda_i).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from curvlab.curvature._support import (
    BatchLike,
    LossFn,
    Reduce,
    dot,
    make_generator,
    measurement_mode,
)
from curvlab.curvature.lanczos import lanczos
from curvlab.curvature.operators import GGNOperator, HessianOperator, Method


@dataclass
class TraceResult:
    """Hutchinson estimate of tr(H).

    Attributes:
        trace: mean of z^T H z over the probes.
        stderr: standard error of that mean (sample std / sqrt(probes)).
        num_probes: probes drawn, one HVP each.
        samples: (num_probes,) float64 values z^T H z.
    """

    trace: float
    stderr: float
    num_probes: int
    samples: Tensor


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    batch: BatchLike,
    max_probes: int = 100,
    min_probes: int = 10,
    rtol: float = 0.01,
    seed: int = 0,
    method: Method = "auto",
    reduce: Reduce | None = None,
) -> TraceResult:
    """Hutchinson's estimate of tr(H) with Rademacher probes, and its standard error.

    Args:
        model: the network; trainable parameters only.
        loss_fn: the loss is ``loss_fn(model(inputs), targets)``, mean-reduced.
        batch: an ``(inputs, targets)`` pair or a list of them.
        max_probes: cap on probes (one HVP each).
        min_probes: probes drawn before the stopping rule is consulted.
        rtol: stop once stderr <= rtol * |trace|; 0 always draws ``max_probes``.
        seed: seeds the private probe generator.
        method: HVP method, see :func:`curvlab.curvature.hvp`.
        reduce: applied to every product, e.g. :func:`ddp_mean_reduce`.
    """
    with measurement_mode(model):
        op = HessianOperator(model, loss_fn, batch, method, reduce)
        generator = make_generator(seed, op.params[0].device)
        samples: list[float] = []

        while len(samples) < max_probes:
            z = [_rademacher(p, generator) for p in op.params]
            samples.append(float(dot(z, op.matvec(z))))

            values = torch.tensor(samples, dtype=torch.float64)
            mean, stderr = _mean_stderr(values)
            if len(samples) >= min_probes and stderr <= rtol * abs(mean):
                break

        return TraceResult(mean, stderr, len(samples), values)


def _rademacher(p: Tensor, generator: torch.Generator) -> Tensor:
    bits = torch.randint(0, 2, p.shape, generator=generator, device=p.device)
    return (2 * bits - 1).to(p.dtype)


def _mean_stderr(values: Tensor) -> tuple[float, float]:
    if len(values) < 2:
        return float(values.mean()), math.inf
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


@dataclass
class SpectralDensity:
    """Quadrature nodes and weights of stochastic Lanczos quadrature.

    Attributes:
        nodes: per probe, the Ritz values theta_j (float64).
        weights: per probe, tau_j = s_{1,j}^2, summing to 1.
        n_hvp: curvature products spent.
    """

    nodes: list[Tensor]
    weights: list[Tensor]
    n_hvp: int

    def density(self, grid: Tensor, sigma: float) -> Tensor:
        """The density on ``grid``, each node smoothed by a Gaussian of width ``sigma``."""
        grid = grid.to(torch.float64)
        out = torch.zeros_like(grid)
        for theta, tau in zip(self.nodes, self.weights, strict=True):
            gauss = torch.exp(-0.5 * ((grid[:, None] - theta[None, :]) / sigma) ** 2)
            out += (gauss * tau).sum(1) / (sigma * math.sqrt(2 * math.pi))
        return out / len(self.nodes)

    def moment(self, p: int) -> float:
        """Estimate of tr(H^p) / n, the p-th moment of the eigenvalue density."""
        pairs = zip(self.nodes, self.weights, strict=True)
        per_probe = [(tau * theta**p).sum() for theta, tau in pairs]
        return float(torch.stack(per_probe).mean())


def spectral_density(
    model: nn.Module,
    loss_fn: LossFn,
    batch: BatchLike,
    num_probes: int = 4,
    num_steps: int = 64,
    seed: int = 0,
    curvature: Literal["hessian", "ggn"] = "hessian",
    method: Method = "auto",
    reduce: Reduce | None = None,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature estimate of the eigenvalue density of H (or G).

    Args:
        model: the network; trainable parameters only.
        loss_fn: the loss is ``loss_fn(model(inputs), targets)``, mean-reduced.
        batch: an ``(inputs, targets)`` pair or a list of them.
        num_probes: independent Lanczos runs from Rademacher probes, averaged.
        num_steps: Lanczos steps per probe (nodes per probe); each holds a copy of theta.
        seed: seeds the private probe generator.
        curvature: ``hessian`` (exact H) or ``ggn`` (Gauss-Newton G).
        method: HVP method, see :func:`curvlab.curvature.hvp`.
        reduce: applied to every product, e.g. :func:`ddp_mean_reduce`.
    """
    with measurement_mode(model):
        if curvature == "hessian":
            op = HessianOperator(model, loss_fn, batch, method, reduce)
        else:
            op = GGNOperator(model, loss_fn, batch, reduce)
        generator = make_generator(seed, op.params[0].device)
        # All probes are drawn before any restart can consume the generator, so a probe does
        # not depend on num_steps.
        probes = [
            torch.cat([_rademacher(p, generator).reshape(-1) for p in op.params])
            for _ in range(num_probes)
        ]
        nodes, weights = [], []

        for q in probes:
            t = lanczos(lambda x: op.matvec_flat(x).detach(), q, num_steps, generator)
            theta, s = t.ritz()
            nodes.append(theta)
            weights.append(s[0] ** 2)

        return SpectralDensity(nodes, weights, op.n_products)
