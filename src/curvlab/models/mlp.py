"""The guide's feed-forward network (chapter 2): affine layers, one activation each.

Layer l computes z_l = W_l a_{l-1} + b_l and a_l = sigma_l(z_l), with a_0 = x flattened.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "gelu", "softmax", "identity")


def make_activation(name: str, negative_slope: float = 0.01) -> nn.Module:
    """Return the activation module for one of :data:`ACTIVATIONS` (section 1.1)."""
    table = {
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "relu": nn.ReLU,
        "leaky_relu": lambda: nn.LeakyReLU(negative_slope),
        "gelu": nn.GELU,
        "softmax": lambda: nn.Softmax(dim=-1),
        "identity": nn.Identity,
    }
    if name not in table:
        raise ValueError(
            f"model.activations: unknown activation {name!r}; valid choices are "
            f"{', '.join(ACTIVATIONS)}."
        )
    return table[name]()


class Layer(nn.Module):
    """One affine layer and its activation: a = sigma(W a_prev + b)."""

    def __init__(self, d_in: int, d_out: int, activation: str, negative_slope: float) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.activation = make_activation(activation, negative_slope)
        self.activation_name = activation

    def forward(self, a_prev: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(a_prev))


class MLP(nn.Module):
    """Multilayer perceptron with configurable widths and one activation per layer.

    Args:
        input_shape: shape of one example; it is flattened to ``prod(input_shape)`` features.
        num_outputs: width of the last layer.
        hidden: widths of the hidden layers, in order (may be empty).
        activations: one name per layer (``len(hidden) + 1`` of them) from
            :data:`ACTIVATIONS`, or one name used for every hidden layer with the output
            layer left as ``identity`` (logits).
        negative_slope: slope of ``leaky_relu`` for negative inputs.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        hidden: Sequence[int] = (128, 64),
        activations: Sequence[str] | str = "relu",
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        widths = [math.prod(input_shape), *hidden, num_outputs]
        n_layers = len(widths) - 1
        if isinstance(activations, str):
            activations = [activations] * (n_layers - 1) + ["identity"]
        activations = list(activations)
        if len(activations) != n_layers:
            raise ValueError(
                f"model.activations has {len(activations)} entries but the network has "
                f"{n_layers} layers (model.hidden={list(hidden)} plus the output layer); "
                "give one activation per layer, or a single name for all hidden layers."
            )
        self.input_shape = tuple(input_shape)
        self.layers = nn.ModuleList(
            Layer(d_in, d_out, act, negative_slope)
            for d_in, d_out, act in zip(widths[:-1], widths[1:], activations, strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.flatten(1) if x.dim() > 1 else x
        for layer in self.layers:
            a = layer(a)
        return a
