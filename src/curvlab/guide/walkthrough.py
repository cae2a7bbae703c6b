"""A worked example's computation table: forward, local derivatives, backward, one update.

Two layouts, both numbered step by step through the whole table:

* ``chronological`` follows the guide's Tables 3.2 (``jacobians=False``) and 3.3
  (``jacobians=True``): the forward pass, every local derivative, then per layer the delta,
  the layer Jacobian J_k, the parameter gradients and the propagation to the layer below.
* ``chain`` follows Tables 2.1-2.7: the forward pass lists each layer's weight and bias, and
  the backward pass writes every local factor (dz_k/dW_k, dz_k/da_{k-1}, ...) before the
  product it enters, noting which earlier steps it uses.

Values come from autograd through curvlab's MLP (:mod:`curvlab.guide.network`); the same
quantities are derived again with section 2.9's delta formulas (:mod:`curvlab.guide.delta_rule`)
and kept beside them for comparison.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from curvlab.guide.delta_rule import (
    ACTIVATION_NAME,
    ACTIVATION_PRIME_TEXT,
    LOSS_TEXT,
    delta_rule_trace,
)
from curvlab.guide.network import NetworkSpec, activation_symbol, autograd_trace
from curvlab.guide.rows import Row, Walkthrough

log = logging.getLogger(__name__)

LAYOUTS = ("chronological", "chain")

#: Autograd and the delta formulas agree to rounding; anything larger is a bug in one of them.
AGREEMENT_TOL = 1e-10


@dataclass
class _Table:
    """Numbers rows as they are added and remembers the step of each symbol."""

    values: dict[str, torch.Tensor]
    notes: bool
    rows: list[Row] = field(default_factory=list)
    steps: dict[str, int] = field(default_factory=dict)

    def add(
        self,
        section: str,
        symbol: str,
        quantity: str,
        expression: str,
        value: torch.Tensor | None,
        note: str = "",
    ) -> None:
        step = len(self.rows) + 1
        self.rows.append(
            Row(step, section, symbol, quantity, expression, value, note if self.notes else "")
        )
        self.steps[symbol] = step

    def from_steps(self, *symbols: str) -> str:
        word = "step" if len(symbols) == 1 else "steps"
        return f"{word} " + " and ".join(str(self.steps[s]) for s in symbols)


@dataclass(frozen=True)
class _Names:
    """The guide's notation: lower-case w for scalar layers, W and transposes for matrices."""

    spec: NetworkSpec

    def w(self, k: int) -> str:
        return f"w_{k}" if self.spec.is_scalar else f"W_{k}"

    def a(self, k: int) -> str:
        return activation_symbol(k, self.spec.n_layers)

    def T(self) -> str:
        return "" if self.spec.is_scalar else "^T"

    def act(self, k: int) -> str:
        return ACTIVATION_NAME[self.spec.activations[k - 1]]

    def prime(self, k: int) -> str:
        text = ACTIVATION_PRIME_TEXT[self.spec.activations[k - 1]]
        return text.format(z=f"z_{k}", a=self.a(k))

    def loss(self) -> tuple[str, str]:
        scalar_text, vector_text, prime_text = LOSS_TEXT[self.spec.loss]
        return (scalar_text if self.spec.y.numel() == 1 else vector_text), prime_text


def _update_rows(t: _Table, spec: NetworkSpec, n: _Names) -> None:
    sec = "Gradient descent update (one step)"
    rule = f"theta+ = theta - eta dL/dtheta, eta = {spec.lr:g}"
    t.add(sec, "update", "Update rule", rule, None, "applied to all parameters")
    for k in range(1, spec.n_layers + 1):
        w = n.w(k)
        t.add(sec, f"W_{k}+", f"{w}+", f"{w}+ = {w} - eta dL/d{w}", t.values[f"W_{k}+"])
        t.add(sec, f"b_{k}+", f"b_{k}+", f"b_{k}+ = b_{k} - eta dL/db_{k}", t.values[f"b_{k}+"])


def chronological_rows(
    spec: NetworkSpec, values: dict[str, torch.Tensor], jacobians: bool, input_grad: bool
) -> list[Row]:
    """Tables 3.2 (``jacobians=False``) and 3.3 (``jacobians=True``) for any spec."""
    t, n, L = _Table(values, notes=jacobians), _Names(spec), spec.n_layers
    loss_text, loss_prime_text = n.loss()

    sec = "Forward pass"
    t.add(sec, "x", "Input", "x", values["x"])
    for k in range(1, L + 1):
        z, a = f"z_{k}", n.a(k)
        t.add(sec, z, f"Pre-act (L{k})", f"{z} = {n.w(k)} {n.a(k - 1)} + b_{k}", values[z])
        quantity = "Output" if k == L else f"Act (L{k}, {n.act(k)})"
        t.add(sec, a, quantity, f"{a} = {n.act(k)}({z})", values[a])
    t.add(sec, "L", "Loss", loss_text, values["L"])

    sec = "Local derivatives and Jacobians" if jacobians else "Local derivatives"
    expr = f"dL/dyhat = {loss_prime_text}"
    t.add(sec, "dL/dyhat", "Loss deriv.", expr, values["dL/dyhat"], "scalar loss derivative")
    for k in range(L, 0, -1):
        key = f"act'(z_{k})"
        expr = f"{n.act(k)}'(z_{k}) = {n.prime(k)}"
        t.add(sec, key, f"{n.act(k)} deriv.", expr, values[key], "local nonlinearity")

    # Per layer, top down: delta_k, J_k, the gradients of W_k and b_k, then dL/da_{k-1}.
    sec = "Backward pass (vector-Jacobian products)" if jacobians else "Backward pass"
    for k in range(L, 0, -1):
        w, a_prev = n.w(k), n.a(k - 1)
        expr = f"delta_{k} = dL/dz_{k} = dL/d{n.a(k)} * {n.act(k)}'(z_{k})"
        t.add(sec, f"delta_{k}", f"Delta (L{k})", expr, values[f"delta_{k}"], "chain rule")
        if jacobians:
            role = "output" if k == L else ("input" if k == 1 else "hidden")
            diag = f"{n.act(k)}'(z_{k}) {w}" if spec.is_scalar else f"diag({n.act(k)}'(z_{k})) {w}"
            expr = f"J_{k} = d{n.a(k)}/d{a_prev} = {diag}"
            t.add(sec, f"J_{k}", f"J_{k}", expr, values[f"J_{k}"], f"{role} Jacobian")
        via = f"via J_{k}"
        expr = f"dL/d{w} = delta_{k} {a_prev}{n.T()}"
        t.add(sec, f"dL/dW_{k}", f"Grad {w}", expr, values[f"dL/dW_{k}"], via)
        t.add(
            sec, f"dL/db_{k}", f"Grad b_{k}", f"dL/db_{k} = delta_{k}", values[f"dL/db_{k}"], via
        )
        if k > 1 or input_grad:
            if jacobians:
                upstream = f"dL/d{n.a(k)}"
                vjp = f"{upstream} J_{k}" if spec.is_scalar else f"J_{k}^T {upstream}"
            else:
                vjp = f"delta_{k} {w}" if spec.is_scalar else f"{w}^T delta_{k}"
            key = f"dL/d{a_prev}"
            t.add(
                sec,
                key,
                f"Prop to {a_prev}",
                f"{key} = {vjp}",
                values[key],
                "vector-Jacobian product",
            )

    if spec.lr is not None:
        _update_rows(t, spec, n)
    return t.rows


def chain_rows(spec: NetworkSpec, values: dict[str, torch.Tensor], input_grad: bool) -> list[Row]:
    """Tables 2.1-2.7: each local factor on its own row, before the product that uses it."""
    t, n, L = _Table(values, notes=True), _Names(spec), spec.n_layers
    loss_text, loss_prime_text = n.loss()

    sec = "Forward pass"
    t.add(sec, "x", "Input", "x", values["x"])
    for k in range(1, L + 1):
        z, a, w = f"z_{k}", n.a(k), n.w(k)
        t.add(sec, f"W_{k}", f"Layer {k} weight", w, values[f"W_{k}"])
        t.add(sec, f"b_{k}", f"Layer {k} bias", f"b_{k}", values[f"b_{k}"])
        t.add(sec, z, f"Pre-activation (L{k})", f"{z} = {w} {n.a(k - 1)} + b_{k}", values[z])
        quantity = (
            f"Output activation ({n.act(k)})" if k == L else f"Activation (L{k}, {n.act(k)})"
        )
        t.add(sec, a, quantity, f"{a} = {n.act(k)}({z})", values[a])
    t.add(sec, "y", "Target", "y", values["y"])
    t.add(sec, "L", "Loss", loss_text, values["L"])

    one = torch.tensor(1.0, dtype=torch.float64)
    for k in range(L, 0, -1):
        sec = f"Backpropagation through layer {k} ({n.act(k)})"
        z, a, a_prev, w = f"z_{k}", n.a(k), n.a(k - 1), n.w(k)
        if k == L:
            note = "forward " + t.from_steps("yhat", "y")
            t.add(sec, "dL/dyhat", "dL/dyhat", loss_prime_text, values["dL/dyhat"], note)
        note = "forward " + t.from_steps(a)
        t.add(sec, f"act'({z})", f"d{a}/d{z}", n.prime(k), values[f"act'({z})"], note)
        note = t.from_steps(f"dL/d{a}", f"act'({z})")
        t.add(sec, f"delta_{k}", f"dL/d{z}", f"dL/d{a} * d{a}/d{z}", values[f"delta_{k}"], note)

        # The affine map's local factors: a_{k-1} for W_k, 1 for b_k, W_k for a_{k-1}.
        note = "forward " + t.from_steps(a_prev)
        t.add(sec, f"d{z}/dW_{k}", f"d{z}/d{w}", f"{a_prev}{n.T()}", values[a_prev], note)
        note = t.from_steps(f"delta_{k}", f"d{z}/dW_{k}")
        expr = f"dL/d{z} {a_prev}{n.T()}"
        t.add(sec, f"dL/dW_{k}", f"dL/d{w}", expr, values[f"dL/dW_{k}"], note)
        t.add(sec, f"d{z}/db_{k}", f"d{z}/db_{k}", "1", one, "affine layer definition")
        note = t.from_steps(f"delta_{k}", f"d{z}/db_{k}")
        t.add(sec, f"dL/db_{k}", f"dL/db_{k}", f"dL/d{z}", values[f"dL/db_{k}"], note)
        if k > 1 or input_grad:
            note = "forward " + t.from_steps(f"W_{k}")
            t.add(sec, f"d{z}/d{a_prev}", f"d{z}/d{a_prev}", w, values[f"W_{k}"], note)
            expr = f"dL/d{z} {w}" if spec.is_scalar else f"{w}^T dL/d{z}"
            note = t.from_steps(f"delta_{k}", f"d{z}/d{a_prev}")
            t.add(sec, f"dL/d{a_prev}", f"dL/d{a_prev}", expr, values[f"dL/d{a_prev}"], note)

    if spec.lr is not None:
        _update_rows(t, spec, n)
    return t.rows


def walk(
    spec: NetworkSpec,
    layout: str = "chronological",
    jacobians: bool = True,
    input_grad: bool = False,
    title: str = "",
) -> Walkthrough:
    """Compute a worked example by autograd, check it against section 2.9, and tabulate it.

    Args:
        spec: the network, sample, loss and learning rate.
        layout: ``chronological`` (Tables 3.2-3.3) or ``chain`` (Tables 2.1-2.7).
        jacobians: in the chronological layout, add the rows J_k of Table 3.3.
        input_grad: add the gradient with respect to the input, dL/dx (sections 3.5-3.6).
        title: a heading for the table.

    Returns:
        The table, with the autograd values and the delta-formula values behind it.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"example.layout: {layout!r} is not one of {', '.join(LAYOUTS)}.")

    values = autograd_trace(spec)
    if layout == "chain":
        rows = chain_rows(spec, values, input_grad)
    else:
        rows = chronological_rows(spec, values, jacobians, input_grad)
    result = Walkthrough(title, rows, values, delta_rule_trace(spec), "section 2.9 delta formulas")

    if result.max_abs_diff > AGREEMENT_TOL:
        log.warning("autograd and the delta formulas disagree: %s", result.diffs())
    return result
