"""A worked example's computation table: forward, local derivatives, backward, one update.

Two layouts, both numbered step by step through the whole table:

* ``chronological`` follows the guide's Tables 3.2 (``jacobians=False``) and 3.3
  (``jacobians=True``): the forward pass, every local derivative, then per layer the delta,
  the layer Jacobian J_l, the parameter gradients and the propagation to the layer below.
* ``chain`` follows Tables 2.1-2.7: the forward pass lists each layer's weight and bias, and
  the backward pass writes every local factor (dz_l/dW_l, dz_l/da_{l-1}, ...) before the
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

    def w(self, l: int) -> str:
        return f"w_{l}" if self.spec.is_scalar else f"W_{l}"

    def a(self, l: int) -> str:
        return activation_symbol(l, self.spec.n_layers)

    def T(self) -> str:
        return "" if self.spec.is_scalar else "^T"

    def act(self, l: int) -> str:
        return ACTIVATION_NAME[self.spec.activations[l - 1]]

    def prime(self, l: int) -> str:
        text = ACTIVATION_PRIME_TEXT[self.spec.activations[l - 1]]
        return text.format(z=f"z_{l}", a=self.a(l))

    def loss(self) -> tuple[str, str]:
        scalar_text, vector_text, prime_text = LOSS_TEXT[self.spec.loss]
        return (scalar_text if self.spec.y.numel() == 1 else vector_text), prime_text


def _update_rows(t: _Table, spec: NetworkSpec, n: _Names) -> None:
    sec = "Gradient descent update (one step)"
    rule = f"theta+ = theta - eta dL/dtheta, eta = {spec.lr:g}"
    t.add(sec, "update", "Update rule", rule, None, "applied to all parameters")
    for l in range(1, spec.n_layers + 1):
        w = n.w(l)
        t.add(sec, f"W_{l}+", f"{w}+", f"{w}+ = {w} - eta dL/d{w}", t.values[f"W_{l}+"])
        t.add(sec, f"b_{l}+", f"b_{l}+", f"b_{l}+ = b_{l} - eta dL/db_{l}", t.values[f"b_{l}+"])


def chronological_rows(
    spec: NetworkSpec, values: dict[str, torch.Tensor], jacobians: bool, input_grad: bool
) -> list[Row]:
    """Tables 3.2 (``jacobians=False``) and 3.3 (``jacobians=True``) for any spec."""
    t, n, L = _Table(values, notes=jacobians), _Names(spec), spec.n_layers
    loss_text, loss_prime_text = n.loss()

    sec = "Forward pass"
    t.add(sec, "x", "Input", "x", values["x"])
    for l in range(1, L + 1):
        z, a = f"z_{l}", n.a(l)
        t.add(sec, z, f"Pre-act (L{l})", f"{z} = {n.w(l)} {n.a(l - 1)} + b_{l}", values[z])
        quantity = "Output" if l == L else f"Act (L{l}, {n.act(l)})"
        t.add(sec, a, quantity, f"{a} = {n.act(l)}({z})", values[a])
    t.add(sec, "L", "Loss", loss_text, values["L"])

    sec = "Local derivatives and Jacobians" if jacobians else "Local derivatives"
    expr = f"dL/dyhat = {loss_prime_text}"
    t.add(sec, "dL/dyhat", "Loss deriv.", expr, values["dL/dyhat"], "scalar loss derivative")
    for l in range(L, 0, -1):
        key = f"act'(z_{l})"
        expr = f"{n.act(l)}'(z_{l}) = {n.prime(l)}"
        t.add(sec, key, f"{n.act(l)} deriv.", expr, values[key], "local nonlinearity")

    # Per layer, top down: delta_l, J_l, the gradients of W_l and b_l, then dL/da_{l-1}.
    sec = "Backward pass (vector-Jacobian products)" if jacobians else "Backward pass"
    for l in range(L, 0, -1):
        w, a_prev = n.w(l), n.a(l - 1)
        expr = f"delta_{l} = dL/dz_{l} = dL/d{n.a(l)} * {n.act(l)}'(z_{l})"
        t.add(sec, f"delta_{l}", f"Delta (L{l})", expr, values[f"delta_{l}"], "chain rule")
        if jacobians:
            role = "output" if l == L else ("input" if l == 1 else "hidden")
            diag = f"{n.act(l)}'(z_{l}) {w}" if spec.is_scalar else f"diag({n.act(l)}'(z_{l})) {w}"
            expr = f"J_{l} = d{n.a(l)}/d{a_prev} = {diag}"
            t.add(sec, f"J_{l}", f"J_{l}", expr, values[f"J_{l}"], f"{role} Jacobian")
        via = f"via J_{l}"
        expr = f"dL/d{w} = delta_{l} {a_prev}{n.T()}"
        t.add(sec, f"dL/dW_{l}", f"Grad {w}", expr, values[f"dL/dW_{l}"], via)
        t.add(sec, f"dL/db_{l}", f"Grad b_{l}", f"dL/db_{l} = delta_{l}", values[f"dL/db_{l}"], via)
        if l > 1 or input_grad:
            if jacobians:
                upstream = f"dL/d{n.a(l)}"
                vjp = f"{upstream} J_{l}" if spec.is_scalar else f"J_{l}^T {upstream}"
            else:
                vjp = f"delta_{l} {w}" if spec.is_scalar else f"{w}^T delta_{l}"
            key = f"dL/d{a_prev}"
            t.add(sec, key, f"Prop to {a_prev}", f"{key} = {vjp}", values[key], "vector-Jacobian product")

    if spec.lr is not None:
        _update_rows(t, spec, n)
    return t.rows


def chain_rows(spec: NetworkSpec, values: dict[str, torch.Tensor], input_grad: bool) -> list[Row]:
    """Tables 2.1-2.7: each local factor on its own row, before the product that uses it."""
    t, n, L = _Table(values, notes=True), _Names(spec), spec.n_layers
    loss_text, loss_prime_text = n.loss()

    sec = "Forward pass"
    t.add(sec, "x", "Input", "x", values["x"])
    for l in range(1, L + 1):
        z, a, w = f"z_{l}", n.a(l), n.w(l)
        t.add(sec, f"W_{l}", f"Layer {l} weight", w, values[f"W_{l}"])
        t.add(sec, f"b_{l}", f"Layer {l} bias", f"b_{l}", values[f"b_{l}"])
        t.add(sec, z, f"Pre-activation (L{l})", f"{z} = {w} {n.a(l - 1)} + b_{l}", values[z])
        quantity = f"Output activation ({n.act(l)})" if l == L else f"Activation (L{l}, {n.act(l)})"
        t.add(sec, a, quantity, f"{a} = {n.act(l)}({z})", values[a])
    t.add(sec, "y", "Target", "y", values["y"])
    t.add(sec, "L", "Loss", loss_text, values["L"])

    one = torch.tensor(1.0, dtype=torch.float64)
    for l in range(L, 0, -1):
        sec = f"Backpropagation through layer {l} ({n.act(l)})"
        z, a, a_prev, w = f"z_{l}", n.a(l), n.a(l - 1), n.w(l)
        if l == L:
            note = "forward " + t.from_steps("yhat", "y")
            t.add(sec, "dL/dyhat", "dL/dyhat", loss_prime_text, values["dL/dyhat"], note)
        note = "forward " + t.from_steps(a)
        t.add(sec, f"act'({z})", f"d{a}/d{z}", n.prime(l), values[f"act'({z})"], note)
        note = t.from_steps(f"dL/d{a}", f"act'({z})")
        t.add(sec, f"delta_{l}", f"dL/d{z}", f"dL/d{a} * d{a}/d{z}", values[f"delta_{l}"], note)

        # The affine map's local factors: a_{l-1} for W_l, 1 for b_l, W_l for a_{l-1}.
        note = "forward " + t.from_steps(a_prev)
        t.add(sec, f"d{z}/dW_{l}", f"d{z}/d{w}", f"{a_prev}{n.T()}", values[a_prev], note)
        note = t.from_steps(f"delta_{l}", f"d{z}/dW_{l}")
        expr = f"dL/d{z} {a_prev}{n.T()}"
        t.add(sec, f"dL/dW_{l}", f"dL/d{w}", expr, values[f"dL/dW_{l}"], note)
        t.add(sec, f"d{z}/db_{l}", f"d{z}/db_{l}", "1", one, "affine layer definition")
        note = t.from_steps(f"delta_{l}", f"d{z}/db_{l}")
        t.add(sec, f"dL/db_{l}", f"dL/db_{l}", f"dL/d{z}", values[f"dL/db_{l}"], note)
        if l > 1 or input_grad:
            note = "forward " + t.from_steps(f"W_{l}")
            t.add(sec, f"d{z}/d{a_prev}", f"d{z}/d{a_prev}", w, values[f"W_{l}"], note)
            expr = f"dL/d{z} {w}" if spec.is_scalar else f"{w}^T dL/d{z}"
            note = t.from_steps(f"delta_{l}", f"d{z}/d{a_prev}")
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
        jacobians: in the chronological layout, add the rows J_l of Table 3.3.
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
