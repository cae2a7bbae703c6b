"""Pearlmutter's R-operator for curvlab's MLP: H v in closed form, without autograd.

H v = grad_theta(g^T v) (guide 2.11) is the directional derivative of the gradient along v,
R{g} in Pearlmutter's (1994) notation, where R{f} = d/de f(theta + e v) at e = 0. For the
guide's feed-forward network (section 2.5) R{} can be pushed through every step of the
forward and backward passes by hand:

    forward    z_l = W_l a_{l-1} + b_l                R{z_l} = V_l a_{l-1} + W_l R{a_{l-1}} + v_b
               a_l = sigma(z_l)                       R{a_l} = sigma'(z_l) R{z_l}
    loss       delta_L = dL/da_L                      R{delta_L} = H_out R{a_L}
    backward   dz_l = sigma'(z_l) da_l                R{dz_l} = sigma'(z_l) R{da_l}
                                                               + sigma''(z_l) R{z_l} da_l
               da_{l-1} = W_l^T dz_l                  R{da_{l-1}} = V_l^T dz_l + W_l^T R{dz_l}
    product    (H v)_{W_l} = R{dz_l} a_{l-1}^T + dz_l R{a_{l-1}}^T,  (H v)_{b_l} = sum R{dz_l}

with R{a_0} = 0 and V_l, v_b the parts of v for W_l and b_l. That is the gradient's forward
and backward pass and their R-images (the weight gradient itself is never needed): per
interior layer 8 matrix products where the gradient takes 3 and the double backward 9, and
for the first layer 3 where the gradient takes 2, as a few dozen eager tensor operations and
no autograd graph, which on the small MLPs curvlab trains costs little more than a gradient.
Only the stock :class:`curvlab.models.MLP` qualifies (:func:`mlp_chain`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from curvlab.curvature.rop.losses import has_hooks, loss_derivatives
from curvlab.models.mlp import MLP, Layer

# Activations whose first and second derivatives are written out below.
SUPPORTED_ACTIVATIONS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "softmax")

_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# rz * (z > 0) in one kernel: ReLU's backward applied to an R-image.
_relu_mask = torch.ops.aten.threshold_backward


@dataclass(frozen=True)
class Step:
    """One layer of the network: its weights and activation."""

    weight: Tensor
    bias: Tensor
    activation: str
    negative_slope: float


@dataclass
class _Cache:
    """What the backward pass of one layer needs from the forward pass."""

    a_prev: Tensor
    ra_prev: Tensor | None
    z: Tensor
    rz: Tensor
    a: Tensor
    ra: Tensor


def mlp_chain(model: nn.Module, params: Sequence[Tensor]) -> list[Step] | None:
    """The layers of ``model`` if the R-operator computes its products exactly, else None.

    ``model`` must be a :class:`MLP` itself (not a subclass, which could change ``forward``),
    with stock layers, supported activations (exact GELU), no forward hooks and every
    parameter trainable, so that ``params`` is each layer's weight and bias in order.
    """
    if type(model) is not MLP or len(params) != 2 * len(model.layers):
        return None
    steps = []
    for layer in model.layers:
        if type(layer) is not Layer:
            return None
        linear, act, name = layer.linear, layer.activation, layer.activation_name
        if type(linear) is not nn.Linear or linear.bias is None:
            return None
        if name not in SUPPORTED_ACTIVATIONS or (name == "gelu" and act.approximate != "none"):
            return None
        slope = act.negative_slope if name == "leaky_relu" else 0.0
        steps.append(Step(linear.weight, linear.bias, name, slope))
    if has_hooks(model):
        return None
    owned = [t for step in steps for t in (step.weight, step.bias)]
    if any(a is not b for a, b in zip(owned, params, strict=True)):
        return None
    return steps


def r_op_hvp(
    steps: Sequence[Step],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    batches: Sequence[tuple[Tensor, Tensor, float]],
    v: Sequence[Tensor],
) -> list[Tensor]:
    """H v of the weighted sum of ``loss_fn(mlp(x), y)`` over ``(x, y, weight)`` batches.

    Inputs must have a batch dimension (``x.dim() >= 2``). Nothing of the model is written
    and no module runs, so no state needs saving around it.
    """
    if len(v) != 2 * len(steps):
        raise ValueError(
            f"v has {len(v)} tensors; the MLP has {2 * len(steps)} trainable parameters "
            "(a weight and a bias per layer, in model.parameters() order)."
        )
    total: list[Tensor] | None = None
    for x, y, w in batches:
        piece = _product(steps, loss_fn, x, y, w, v)
        total = piece if total is None else [t.add_(p) for t, p in zip(total, piece, strict=True)]
    assert total is not None
    return total


def _product(
    steps: Sequence[Step],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    w: float,
    v: Sequence[Tensor],
) -> list[Tensor]:
    with torch.no_grad():
        a, ra = x.flatten(1), None
        caches = []
        for i, step in enumerate(steps):
            z = torch.addmm(step.bias, a, step.weight.t())
            rz = torch.addmm(v[2 * i + 1], a, v[2 * i].t())
            if ra is not None:
                rz.addmm_(ra, step.weight.t())
            a_prev, ra_prev = a, ra
            a, ra = _activation_forward(step, z, rz)
            caches.append(_Cache(a_prev, ra_prev, z, rz, a, ra))

        da, rda = loss_derivatives(loss_fn, a, ra, y, w)

        out: list[Tensor] = [None] * (2 * len(steps))  # type: ignore[list-item]
        for i in reversed(range(len(steps))):
            step, cache = steps[i], caches[i]
            dz, rdz = _activation_backward(step, cache, da, rda)
            weight_hv = rdz.t() @ cache.a_prev
            if cache.ra_prev is not None:
                weight_hv.addmm_(dz.t(), cache.ra_prev)
            out[2 * i], out[2 * i + 1] = weight_hv, rdz.sum(0)
            if i > 0:
                da = dz @ step.weight
                rda = torch.addmm(dz @ v[2 * i], rdz, step.weight)
        return out


def _activation_forward(step: Step, z: Tensor, rz: Tensor) -> tuple[Tensor, Tensor]:
    """a = sigma(z) and R{a} = sigma'(z) R{z}."""
    name = step.activation
    if name == "identity":
        return z, rz
    if name == "relu":
        return torch.relu(z), _relu_mask(rz, z, 0)
    if name == "leaky_relu":
        positive, slope = z > 0, step.negative_slope
        return _leaky(z, positive, slope), _leaky(rz, positive, slope)
    if name == "softmax":
        a = torch.softmax(z, dim=-1)
        return a, a * (rz - (a * rz).sum(-1, keepdim=True))
    a = _smooth(name, z)
    return a, _first_derivative(name, z, a) * rz


def _activation_backward(
    step: Step, cache: _Cache, da: Tensor, rda: Tensor
) -> tuple[Tensor, Tensor]:
    """dL/dz and its R-image from dL/da and its R-image, through one activation."""
    name, z, a = step.activation, cache.z, cache.a
    if name == "identity":
        return da, rda
    if name == "relu":
        return _relu_mask(da, z, 0), _relu_mask(rda, z, 0)
    if name == "leaky_relu":
        positive, slope = z > 0, step.negative_slope
        return _leaky(da, positive, slope), _leaky(rda, positive, slope)
    if name == "softmax":
        # dz = a (da - <a, da>); its R-image differentiates a, da and the inner product.
        centred = da - (a * da).sum(-1, keepdim=True)
        inner_r = (cache.ra * da).sum(-1, keepdim=True) + (a * rda).sum(-1, keepdim=True)
        return a * centred, cache.ra * centred + a * (rda - inner_r)
    d1 = _first_derivative(name, z, a)
    d2 = _second_derivative(name, z, a, d1)
    return d1 * da, d1 * rda + d2 * cache.rz * da


def _leaky(t: Tensor, positive: Tensor, slope: float) -> Tensor:
    """t where z > 0, else slope * t: leaky ReLU's derivative (or itself) applied to t."""
    return torch.where(positive, t, t * slope)


def _smooth(name: str, z: Tensor) -> Tensor:
    if name == "sigmoid":
        return torch.sigmoid(z)
    if name == "tanh":
        return torch.tanh(z)
    return z * _normal_cdf(z)  # exact GELU


def _first_derivative(name: str, z: Tensor, a: Tensor) -> Tensor:
    if name == "sigmoid":
        return a * (1 - a)
    if name == "tanh":
        return 1 - a * a
    return _normal_cdf(z) + z * _normal_pdf(z)


def _second_derivative(name: str, z: Tensor, a: Tensor, d1: Tensor) -> Tensor:
    if name == "sigmoid":
        return d1 * (1 - 2 * a)
    if name == "tanh":
        return -2 * a * d1
    return _normal_pdf(z) * (2 - z * z)


def _normal_cdf(z: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(z * _INV_SQRT_2))


def _normal_pdf(z: Tensor) -> Tensor:
    return torch.exp(-0.5 * z * z) * _INV_SQRT_2PI
