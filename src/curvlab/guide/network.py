"""A worked example's network, built as curvlab's MLP and differentiated by autograd.

The guide's worked examples (sections 2.7, 2.8, 3.5 and 3.9) fix every weight by hand. Layer k
computes z_k = W_k a_{k-1} + b_k and a_k = sigma_k(z_k) with a_0 = x and yhat = a_L. Shapes:
W_k is (d_k, d_{k-1}), b_k, z_k, a_k and delta_k are (d_k,), for one sample (no batch axis).

Every traced quantity is stored under a symbol shared with :mod:`curvlab.guide.delta_rule`, so
the two computations can be compared key by key: ``x``, ``y``, ``W_k``, ``b_k``, ``z_k``,
``a_k`` (``yhat`` for the last layer), ``L``, ``dL/dyhat``, ``act'(z_k)``, ``delta_k``, ``J_k``,
``dL/dW_k``, ``dL/db_k``, ``dL/da_k`` (``dL/dx`` for the input) and, after one gradient-descent
step, ``W_k+`` and ``b_k+``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from curvlab.models.mlp import MLP

log = logging.getLogger(__name__)

#: Activations whose derivative is element-wise, the case section 2.9's Hadamard form covers.
ELEMENTWISE_ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "gelu", "identity")

#: Per-sample losses of the worked examples, as torch computes them (summed over outputs).
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "half_squared_error": lambda yhat, y: 0.5 * F.mse_loss(yhat, y, reduction="sum"),
    "binary_cross_entropy": lambda yhat, y: F.binary_cross_entropy(yhat, y, reduction="sum"),
}


def activation_symbol(layer: int, n_layers: int) -> str:
    """Name of a_layer: ``x`` for the input, ``yhat`` for the output, ``a_k`` otherwise."""
    if layer == 0:
        return "x"
    return "yhat" if layer == n_layers else f"a_{layer}"


def _as_matrix(value: Any, name: str) -> torch.Tensor:
    W = torch.as_tensor(value, dtype=torch.float64)
    if W.dim() > 2:
        raise ValueError(
            f"{name} must be a number, a row or a matrix; got shape {tuple(W.shape)}."
        )

    # A number is a 1x1 layer; a flat list is one row, as the guide writes W_3 = (1.4  -0.8).
    return W.reshape(1, -1) if W.dim() < 2 else W


def _as_vector(value: Any, name: str) -> torch.Tensor:
    v = torch.as_tensor(value, dtype=torch.float64)
    if v.dim() > 1:
        raise ValueError(f"{name} must be a number or a flat list; got shape {tuple(v.shape)}.")
    return v.reshape(-1)


@dataclass(frozen=True)
class NetworkSpec:
    """One worked example: weights, activations, one sample, a loss and a learning rate.

    Args:
        W: one weight matrix per layer, W_k of shape (d_k, d_{k-1}).
        b: one bias vector per layer, b_k of shape (d_k,).
        activations: one name per layer from :data:`ELEMENTWISE_ACTIVATIONS`.
        x: the input a_0, shape (d_0,).
        y: the target, shape (d_L,).
        loss: a key of :data:`LOSSES`.
        lr: the gradient-descent step size eta, or None to stop after the backward pass.
        negative_slope: slope of ``leaky_relu`` for z <= 0.
    """

    W: tuple[torch.Tensor, ...]
    b: tuple[torch.Tensor, ...]
    activations: tuple[str, ...]
    x: torch.Tensor
    y: torch.Tensor
    loss: str = "half_squared_error"
    lr: float | None = None
    negative_slope: float = 0.01

    def __post_init__(self) -> None:
        n_layers = len(self.W)
        if n_layers == 0 or len(self.b) != n_layers or len(self.activations) != n_layers:
            raise ValueError(
                f"example.W, example.b and example.activations need one entry per layer; got "
                f"{n_layers}, {len(self.b)} and {len(self.activations)}."
            )

        # Section 2.9's delta recursion uses Hadamard products, so sigma' must be diagonal.
        # TODO(softmax): a softmax layer needs its full Jacobian diag(a) - a a^T in delta_rule.
        for act in self.activations:
            if act not in ELEMENTWISE_ACTIVATIONS:
                raise ValueError(
                    f"example.activations: {act!r} is not supported here; choose from "
                    f"{', '.join(ELEMENTWISE_ACTIVATIONS)}."
                )
        if self.loss not in LOSSES:
            raise ValueError(f"example.loss: {self.loss!r} is not one of {', '.join(LOSSES)}.")

        d_prev = self.x.numel()
        for k, (W, b) in enumerate(zip(self.W, self.b, strict=True), start=1):
            if W.shape[1] != d_prev:
                raise ValueError(
                    f"example.W[{k - 1}] is {W.shape[0]}x{W.shape[1]}, so it needs a_{k - 1} of "
                    f"{W.shape[1]} entries, but a_{k - 1} has {d_prev} (example.x has "
                    f"{self.x.numel()})."
                )
            if b.numel() != W.shape[0]:
                raise ValueError(
                    f"example.b[{k - 1}] has {b.numel()} entries but W_{k} has {W.shape[0]} rows."
                )
            d_prev = W.shape[0]
        if self.y.numel() != d_prev:
            raise ValueError(f"example.y has {self.y.numel()} entries; the output has {d_prev}.")

    @property
    def n_layers(self) -> int:
        """Number of affine layers L."""
        return len(self.W)

    @property
    def is_scalar(self) -> bool:
        """True when every layer has one neuron and one input (the guide's scalar examples)."""
        return all(W.numel() == 1 for W in self.W)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> NetworkSpec:
        """Build a spec from an ``example`` config (plain numbers and nested lists).

        A weight may be a number (a 1x1 layer), a flat list (a single row) or a matrix; a bias
        or the input or target may be a number or a flat list.
        """
        return cls(
            W=tuple(_as_matrix(W, f"example.W[{i}]") for i, W in enumerate(cfg["W"])),
            b=tuple(_as_vector(b, f"example.b[{i}]") for i, b in enumerate(cfg["b"])),
            activations=tuple(cfg["activations"]),
            x=_as_vector(cfg["x"], "example.x"),
            y=_as_vector(cfg["y"], "example.y"),
            loss=cfg.get("loss", "half_squared_error"),
            lr=None if cfg.get("lr") is None else float(cfg["lr"]),
            negative_slope=float(cfg.get("negative_slope", 0.01)),
        )


def build_mlp(spec: NetworkSpec) -> MLP:
    """curvlab's MLP in float64 with the example's weights copied in."""
    widths = [W.shape[0] for W in spec.W]
    model = MLP(
        input_shape=(spec.x.numel(),),
        num_outputs=widths[-1],
        hidden=widths[:-1],
        activations=list(spec.activations),
        negative_slope=spec.negative_slope,
    ).double()

    with torch.no_grad():
        for layer, W, b in zip(model.layers, spec.W, spec.b, strict=True):
            layer.linear.weight.copy_(W)
            layer.linear.bias.copy_(b)
    return model


def autograd_trace(spec: NetworkSpec) -> dict[str, torch.Tensor]:
    """Forward, backward and one SGD step through curvlab's MLP, all derivatives by autograd.

    Args:
        spec: the worked example; a fresh float64 MLP is built from it.

    Returns:
        Every quantity under the symbols listed in this module's docstring.
    """
    model = build_mlp(spec)
    n_layers = spec.n_layers
    values: dict[str, torch.Tensor] = {"x": spec.x.clone(), "y": spec.y.clone()}

    # Walk the layers one by one (the same modules model.forward chains) to keep z_k and a_k.
    x = spec.x.clone().requires_grad_(True)
    a, z_list, a_list = x, [], [x]
    for k, layer in enumerate(model.layers, start=1):
        values[f"W_{k}"] = layer.linear.weight.detach().clone()
        values[f"b_{k}"] = layer.linear.bias.detach().clone()
        z = layer.linear(a)
        a = layer.activation(z)
        z.retain_grad()
        a.retain_grad()
        z_list.append(z)
        a_list.append(a)

    # The per-layer walk must be the network itself, or the table would explain another model.
    with torch.no_grad():
        if not torch.equal(model(spec.x), a.detach()):
            raise RuntimeError(
                "MLP.forward no longer equals chaining layer.linear and layer.activation; "
                "curvlab.guide.network.autograd_trace must follow it."
            )

    loss = LOSSES[spec.loss](a, spec.y)
    model.zero_grad()
    loss.backward()
    values["L"] = loss.detach()

    # One backward pass fills delta_k = dL/dz_k, dL/da_k and the parameter gradients.
    for k, layer in enumerate(model.layers, start=1):
        values[f"z_{k}"] = z_list[k - 1].detach()
        values[activation_symbol(k, n_layers)] = a_list[k].detach()
        values[f"dL/d{activation_symbol(k, n_layers)}"] = a_list[k].grad.detach()
        values[f"delta_{k}"] = z_list[k - 1].grad.detach()
        values[f"dL/dW_{k}"] = layer.linear.weight.grad.detach().clone()
        values[f"dL/db_{k}"] = layer.linear.bias.grad.detach().clone()
    values["dL/dx"] = x.grad.detach()

    # Local derivatives and layer Jacobians J_k = da_k/da_{k-1}, each its own autograd call.
    jacobian = torch.autograd.functional.jacobian
    for k, layer in enumerate(model.layers, start=1):
        values[f"act'(z_{k})"] = jacobian(layer.activation, values[f"z_{k}"]).diagonal()
        values[f"J_{k}"] = jacobian(layer, a_list[k - 1].detach())

    if spec.lr is not None:
        torch.optim.SGD(model.parameters(), lr=spec.lr).step()
        for k, layer in enumerate(model.layers, start=1):
            values[f"W_{k}+"] = layer.linear.weight.detach().clone()
            values[f"b_{k}+"] = layer.linear.bias.detach().clone()

    log.debug("autograd trace of a %d-layer network: L = %.6g", n_layers, float(values["L"]))
    return values
