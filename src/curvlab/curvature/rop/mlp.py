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

with R{a_0} = 0 and V_l, v_b the parts of v for W_l and b_l. The left column does not
depend on v: :class:`MlpPass` runs it once per batch and keeps it, and each product then
costs the right column alone, per interior layer 6 matrix products (the first layer 2) where
the gradient takes 3 and the double backward 9, and no autograd graph.
Only the stock :class:`curvlab.models.MLP` qualifies (:func:`mlp_chain`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from curvlab.curvature.rop.losses import LossCurvature, has_hooks
from curvlab.models.mlp import MLP, Layer

# Activations whose first and second derivatives are written out below.
SUPPORTED_ACTIVATIONS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "softmax")

_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# rz * (z > 0) in one kernel: ReLU's backward applied to an R-image.
_relu_mask = torch.ops.aten.threshold_backward
# Activations whose sigma' is constant between kinks and whose sigma'' is zero.
_PIECEWISE_LINEAR = ("identity", "relu", "leaky_relu")


@dataclass(frozen=True)
class Step:
    """One layer of the network: its weights and activation."""

    weight: Tensor
    bias: Tensor
    activation: str
    negative_slope: float


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


class MlpPass:
    """The gradient's forward and backward pass of the MLP at one batch, kept for products.

    Everything the R-images need that does not depend on v (the activations, sigma' and
    sigma'' at z_l, the loss's derivatives, dL/dz_l) is computed here once; :meth:`hvp` then
    pushes a v through the forward and backward pass: 6 matrix products per interior layer
    and 2 for the first. Nothing of the model is written and no module runs, so no state
    needs saving around it. Inputs must have a batch dimension (``x.dim() >= 2``).
    """

    def __init__(
        self,
        steps: Sequence[Step],
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        x: Tensor,
        y: Tensor,
        w: float,
    ) -> None:
        self.steps = list(steps)
        with torch.no_grad():
            a = x.flatten(1)
            self.layers: list[_Layer] = []
            for step in steps:
                z = torch.addmm(step.bias, a, step.weight.t())
                positive = z > 0 if step.activation == "leaky_relu" else None
                layer = _Layer(a_prev=a, z=z, a=_activation(step, z, positive), positive=positive)
                self.layers.append(layer)
                a = layer.a
            self.loss = LossCurvature(loss_fn, a, y, w)
            da = self.loss.delta
            for i in reversed(range(len(steps))):
                _backward(steps[i], self.layers[i], da)
                if i > 0:
                    da = self.layers[i].dz @ steps[i].weight

    def hvp(self, v: Sequence[Tensor]) -> list[Tensor]:
        """H v at this batch, for v in ``model.parameters()`` order (weight, bias per layer)."""
        steps, layers = self.steps, self.layers
        with torch.no_grad():
            ra: Tensor | None = None
            images: list[tuple[Tensor | None, Tensor, Tensor]] = []  # R{a_prev}, R{z}, R{a}
            for i, (step, layer) in enumerate(zip(steps, layers, strict=True)):
                rz = torch.addmm(v[2 * i + 1], layer.a_prev, v[2 * i].t())
                if ra is not None:
                    rz.addmm_(ra, step.weight.t())
                ra_prev, ra = ra, _tangent_forward(step, layer, rz)
                images.append((ra_prev, rz, ra))

            rda = self.loss.hessian_times(ra)
            out: list[Tensor] = [None] * (2 * len(steps))  # type: ignore[list-item]
            for i in reversed(range(len(steps))):
                step, layer, (ra_prev, rz, ra) = steps[i], layers[i], images[i]
                rdz = _tangent_backward(step, layer, rz, ra, rda)
                weight_hv = rdz.t() @ layer.a_prev
                if ra_prev is not None:
                    weight_hv.addmm_(layer.dz.t(), ra_prev)
                out[2 * i], out[2 * i + 1] = weight_hv, rdz.sum(0)
                if i > 0:
                    rda = torch.addmm(layer.dz @ v[2 * i], rdz, step.weight)
            return out


@dataclass
class _Layer:
    """One layer at the batch: the forward pass, and what its backward pass leaves."""

    a_prev: Tensor
    z: Tensor
    a: Tensor
    dz: Tensor | None = None  # dL/dz
    d1: Tensor | None = None  # sigma'(z) of a smooth activation
    curve: Tensor | None = None  # sigma''(z) dL/da of a smooth activation
    da: Tensor | None = None  # dL/da of a softmax
    centred: Tensor | None = None  # dL/da - <a, dL/da> of a softmax
    positive: Tensor | None = None  # z > 0 of a leaky ReLU, made once per batch


def _activation(step: Step, z: Tensor, positive: Tensor | None) -> Tensor:
    name = step.activation
    if name == "identity":
        return z
    if name == "relu":
        return torch.relu(z)
    if name == "leaky_relu":
        return _leaky(z, positive, step.negative_slope)
    if name == "softmax":
        return torch.softmax(z, dim=-1)
    return _smooth(name, z)


def _backward(step: Step, layer: _Layer, da: Tensor) -> None:
    """dL/dz from dL/da, keeping what the R-images of this step need."""
    name, z, a = step.activation, layer.z, layer.a
    if name in _PIECEWISE_LINEAR:
        layer.dz = _piecewise_linear(step, layer, da)
    elif name == "softmax":
        layer.da, layer.centred = da, da - (a * da).sum(-1, keepdim=True)
        layer.dz = a * layer.centred
    else:
        layer.d1 = _first_derivative(name, z, a)
        layer.curve = _second_derivative(name, z, a, layer.d1).mul_(da)
        layer.dz = layer.d1 * da


def _tangent_forward(step: Step, layer: _Layer, rz: Tensor) -> Tensor:
    """R{a} = sigma'(z) R{z}."""
    if step.activation in _PIECEWISE_LINEAR:
        return _piecewise_linear(step, layer, rz)
    if step.activation == "softmax":
        a = layer.a
        return a * (rz - (a * rz).sum(-1, keepdim=True))
    return layer.d1 * rz


def _tangent_backward(step: Step, layer: _Layer, rz: Tensor, ra: Tensor, rda: Tensor) -> Tensor:
    """R{dL/dz} = sigma'(z) R{dL/da} + sigma''(z) R{z} dL/da (softmax: its Jacobian's)."""
    if step.activation in _PIECEWISE_LINEAR:  # sigma'' = 0
        return _piecewise_linear(step, layer, rda)
    if step.activation == "softmax":
        # dz = a (da - <a, da>); its R-image differentiates a, da and the inner product.
        a = layer.a
        inner_r = (ra * layer.da).sum(-1, keepdim=True) + (a * rda).sum(-1, keepdim=True)
        return ra * layer.centred + a * (rda - inner_r)
    return torch.addcmul(layer.curve * rz, layer.d1, rda)


def _piecewise_linear(step: Step, layer: _Layer, t: Tensor) -> Tensor:
    """sigma'(z) t for identity, ReLU and leaky ReLU, whose sigma' is a constant per element."""
    if step.activation == "identity":
        return t
    if step.activation == "relu":
        return _relu_mask(t, layer.z, 0)
    return _leaky(t, layer.positive, step.negative_slope)


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
