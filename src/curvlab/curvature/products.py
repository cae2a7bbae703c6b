"""Single curvature products: H v, G v and the curvature along the gradient (guide 2.11)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from curvlab.curvature import rop
from curvlab.curvature._support import (
    BatchLike,
    LossFn,
    Reduce,
    as_batches,
    dot,
    measurement_mode,
    trainable_params,
)
from curvlab.curvature.operators import GGNOperator, HessianOperator, Method


def hvp(
    model: nn.Module,
    loss_fn: LossFn,
    batch: BatchLike,
    v: Sequence[Tensor],
    method: Method = "auto",
    reduce: Reduce | None = None,
) -> list[Tensor]:
    """The Hessian-vector product H v of the batch loss (guide 2.11, identity H v = grad(g^T v)).

    Args:
        model: the network; H is taken over its trainable parameters.
        loss_fn: the loss is ``loss_fn(model(inputs), targets)``, mean-reduced.
        batch: an ``(inputs, targets)`` pair or a list of them (weighted by size).
        v: one tensor per trainable parameter, in ``model.parameters()`` order.
        method: ``reverse`` (double backward), ``forward`` (``torch.func`` forward-over-
            reverse), ``rop`` (Pearlmutter's R-operator in closed form, curvlab's MLP and
            ViT) or ``auto`` (``rop`` where it applies, else the faster of the other two for
            this model, timed on first use).
        reduce: applied to the product, e.g. :func:`ddp_mean_reduce` under DDP.

    Returns:
        H v, one tensor per trainable parameter.
    """
    if method in ("auto", "rop"):
        product = _closed_form_hvp(model, loss_fn, batch, v, reduce)
        if product is not None:
            return product
    with measurement_mode(model):
        op = HessianOperator(model, loss_fn, batch, method, reduce, usage="single")
        return [t.detach() for t in op.matvec(v)]


def _closed_form_hvp(
    model: nn.Module, loss_fn: LossFn, batch: BatchLike, v: Sequence[Tensor], reduce: Reduce | None
) -> list[Tensor] | None:
    """H v by the R-operator for curvlab's MLP, else None.

    It reads the weights and runs no module, so the flags, buffers and RNG states that
    :func:`measurement_mode` saves and restores (a fifth of a small MLP's gradient) are
    never touched.
    """
    params = trainable_params(model)
    if not params:
        return None
    batches = as_batches(batch, params[0].device)
    closed = rop.closed_form(model, loss_fn, params, batches)
    if closed is None or closed.kind != "mlp":
        return None  # a ViT may need refusing (fused attention): measurement_mode checks it
    with torch.inference_mode(False):
        product = closed.product(list(v))
    return reduce(product) if reduce is not None else product


def ggn_vector_product(
    model: nn.Module,
    loss_fn: LossFn,
    batch: BatchLike,
    v: Sequence[Tensor],
    reduce: Reduce | None = None,
) -> list[Tensor]:
    """The generalised Gauss-Newton product G v = J^T H_z J v, positive semi-definite.

    G is the Hessian with the network's second derivatives dropped; it equals H for a model
    that is linear in its parameters. Arguments as in :func:`hvp`; the loss must be convex in
    the model's outputs for G to be PSD.
    """
    with measurement_mode(model):
        op = GGNOperator(model, loss_fn, batch, reduce)
        return [t.detach() for t in op.matvec(v)]


@dataclass
class GradientCurvature:
    """Curvature along the gradient direction.

    Attributes:
        curvature: g^T H g / ||g||^2, the second derivative of f along g / ||g||.
        grad_norm: ||g||.
        n_hvp: Hessian-vector products spent (one).
    """

    curvature: float
    grad_norm: float
    n_hvp: int


def gradient_curvature(
    model: nn.Module,
    loss_fn: LossFn,
    batch: BatchLike,
    method: Method = "reverse",
    reduce: Reduce | None = None,
) -> GradientCurvature:
    """g^T H g / ||g||^2: how sharply the loss bends along the descent direction (guide 2.11.4).

    Under DDP ``reduce`` averages g first (so every rank probes the same direction) and then
    the product H g.
    """
    with measurement_mode(model):
        op = HessianOperator(model, loss_fn, batch, method, reduce, usage="single")
        _, g = op.loss_and_gradient()
        if reduce is not None:
            g = reduce(g)

        hg = op.matvec(g)
        g_norm_sq = dot(g, g)
        curvature = dot(g, hg) / g_norm_sq if g_norm_sq > 0 else g_norm_sq
        return GradientCurvature(float(curvature), float(g_norm_sq.sqrt()), op.n_products)
