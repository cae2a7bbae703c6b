"""Backpropagation written out by hand: the matrix-form delta recursion of the guide's section 2.9.

No autograd here. With ``*`` the Hadamard (element-wise) product:

    delta_L = dL/dyhat * sigma_L'(z_L)
    delta_k = (W_{k+1}^T delta_{k+1}) * sigma_k'(z_k)
    dL/dW_k = delta_k a_{k-1}^T   (an outer product),   dL/db_k = delta_k
    dL/dx   = W_1^T delta_1                             (section 3.5.6)
    J_k     = diag(sigma_k'(z_k)) W_k                   (section 3.4)
    theta+  = theta - eta dL/dtheta                     (section 3.9.7)

The activation derivatives are those of sections 2.8.2 and 3.5.2. The results carry the same
symbols as :func:`curvlab.guide.network.autograd_trace`, so the two can be compared entry by entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from curvlab.guide.network import NetworkSpec, activation_symbol

_Activation = Callable[[torch.Tensor, float], torch.Tensor]


def _gelu(z: torch.Tensor) -> torch.Tensor:
    # The exact GELU of section 1.1.6, z Phi(z), with Phi the standard normal CDF.
    return z * 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


def _gelu_prime(z: torch.Tensor) -> torch.Tensor:
    # d/dz [z Phi(z)] = Phi(z) + z phi(z), phi the standard normal density.
    Phi = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    phi = torch.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    return Phi + z * phi


#: sigma(z), given z and the leaky slope.
ACTIVATION: dict[str, _Activation] = {
    "sigmoid": lambda z, s: 1.0 / (1.0 + torch.exp(-z)),
    "tanh": lambda z, s: torch.tanh(z),
    "relu": lambda z, s: torch.where(z > 0, z, torch.zeros_like(z)),
    "leaky_relu": lambda z, s: torch.where(z > 0, z, s * z),
    "gelu": lambda z, s: _gelu(z),
    "identity": lambda z, s: z,
}

#: sigma'(z), given z, a = sigma(z) and the leaky slope; written in a where the guide does.
ACTIVATION_PRIME: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "sigmoid": lambda z, a, s: a * (1.0 - a),
    "tanh": lambda z, a, s: 1.0 - a**2,
    "relu": lambda z, a, s: (z > 0).to(z.dtype),
    "leaky_relu": lambda z, a, s: torch.where(z > 0, torch.ones_like(z), torch.full_like(z, s)),
    "gelu": lambda z, a, s: _gelu_prime(z),
    "identity": lambda z, a, s: torch.ones_like(z),
}

#: The same derivatives as text, with ``{z}`` and ``{a}`` standing for the layer's symbols.
ACTIVATION_PRIME_TEXT = {
    "sigmoid": "{a} (1 - {a})",
    "tanh": "1 - {a}^2",
    "relu": "1[{z} > 0]",
    "leaky_relu": "1 if {z} > 0 else slope",
    "gelu": "Phi({z}) + {z} phi({z})",
    "identity": "1",
}

#: How the tables name each activation.
ACTIVATION_NAME = {
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "relu": "ReLU",
    "leaky_relu": "leaky ReLU",
    "gelu": "GELU",
    "identity": "identity",
}

#: Loss value L(yhat, y) for one sample, summed over outputs.
LOSS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "half_squared_error": lambda yhat, y: 0.5 * ((yhat - y) ** 2).sum(),
    "binary_cross_entropy": lambda yhat, y: -(y * yhat.log() + (1 - y) * (1 - yhat).log()).sum(),
}

#: dL/dyhat for each loss (section 3.5.2 for the half squared error).
LOSS_PRIME: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "half_squared_error": lambda yhat, y: yhat - y,
    "binary_cross_entropy": lambda yhat, y: (yhat - y) / (yhat * (1 - yhat)),
}

#: The loss and its derivative as text, for scalar and vector outputs.
LOSS_TEXT = {
    "half_squared_error": ("L = 1/2 (yhat - y)^2", "L = 1/2 ||yhat - y||^2", "yhat - y"),
    "binary_cross_entropy": (
        "L = -[y log yhat + (1 - y) log(1 - yhat)]",
        "L = -sum[y log yhat + (1 - y) log(1 - yhat)]",
        "(yhat - y) / (yhat (1 - yhat))",
    ),
}


def delta_rule_trace(spec: NetworkSpec) -> dict[str, torch.Tensor]:
    """Every quantity of the walkthrough from the explicit formulas, without autograd.

    Args:
        spec: the worked example.

    Returns:
        The quantities under the symbols of :func:`curvlab.guide.network.autograd_trace`
        (all derived ones; the inputs x, y, W_k and b_k are not repeated).
    """
    n_layers, s = spec.n_layers, spec.negative_slope
    values: dict[str, torch.Tensor] = {}

    # Forward pass (eqs. 2.1-2.3): keep every z_k and a_k, which the backward pass reuses.
    z_list, a_list = [], [spec.x]
    for W, b, act in zip(spec.W, spec.b, spec.activations, strict=True):
        z = W @ a_list[-1] + b
        z_list.append(z)
        a_list.append(ACTIVATION[act](z, s))
    yhat = a_list[-1]
    values["L"] = LOSS[spec.loss](yhat, spec.y)

    sigma_prime = [
        ACTIVATION_PRIME[act](z, a, s)
        for act, z, a in zip(spec.activations, z_list, a_list[1:], strict=True)
    ]

    # Backward pass: delta_L from the loss, then delta_k = (W_{k+1}^T delta_{k+1}) * sigma'.
    dL_da = LOSS_PRIME[spec.loss](yhat, spec.y)
    for k in range(n_layers, 0, -1):
        i = k - 1
        values[activation_symbol(k, n_layers)] = a_list[k]
        values[f"dL/d{activation_symbol(k, n_layers)}"] = dL_da
        values[f"z_{k}"] = z_list[i]
        values[f"act'(z_{k})"] = sigma_prime[i]
        delta = dL_da * sigma_prime[i]
        values[f"delta_{k}"] = delta
        values[f"J_{k}"] = torch.diag(sigma_prime[i]) @ spec.W[i]
        values[f"dL/dW_{k}"] = torch.outer(delta, a_list[i])
        values[f"dL/db_{k}"] = delta
        dL_da = spec.W[i].T @ delta
    values["dL/dx"] = dL_da

    if spec.lr is not None:
        for k in range(1, n_layers + 1):
            values[f"W_{k}+"] = spec.W[k - 1] - spec.lr * values[f"dL/dW_{k}"]
            values[f"b_{k}+"] = spec.b[k - 1] - spec.lr * values[f"dL/db_{k}"]
    return values
