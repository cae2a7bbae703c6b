"""The guide's two scalar examples of how autograd combines derivatives.

* Section 2.10: a node used twice gets the sum of the gradients along its outgoing edges.
* Section 2.11.1: a Hessian-vector product Hu from a second backward pass, never forming H.

Each returns a :class:`~curvlab.guide.rows.Walkthrough` whose values come from autograd and
whose reference comes from the hand-derived formulas the guide prints.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from curvlab.guide.rows import Row, Walkthrough

_f64 = torch.float64


def _scalar(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=_f64)


def chain_rule_accumulation(x: float = 3.0) -> Walkthrough:
    """Section 2.10: f = v5 v6 with v3 = x^2, v5 = 2 v3, v6 = v3 + 1.

    v3 feeds both v5 and v6, so df/dv3 = df/dv6 dv6/dv3 + df/dv5 dv5/dv3 (38 at x = 3).

    Args:
        x: the input.

    Returns:
        The table, with autograd's values and the explicit chain rule's.
    """
    # Autograd: retain_grad keeps the accumulated gradient of each intermediate node.
    x_t = torch.tensor(x, dtype=_f64, requires_grad=True)
    v3 = x_t**2
    v5 = 2 * v3
    v6 = v3 + 1
    f = v5 * v6
    for v in (v3, v5, v6):
        v.retain_grad()
    f.backward()
    nodes = {"x": x_t, "v3": v3, "v5": v5, "v6": v6, "f": f}
    values = {key: v.detach() for key, v in nodes.items()}
    values |= {"df/dv5": v5.grad, "df/dv6": v6.grad, "df/dv3": v3.grad, "df/dx": x_t.grad}

    # The explicit chain rule: one product per outgoing edge of v3, then their sum.
    r = {"x": _scalar(x), "v3": _scalar(x**2)}
    r |= {"v5": 2 * r["v3"], "v6": r["v3"] + 1}
    r |= {"f": r["v5"] * r["v6"], "df/dv5": r["v6"], "df/dv6": r["v5"]}
    r |= {"dv5/dv3": _scalar(2.0), "dv6/dv3": _scalar(1.0)}
    r |= {"path v6": r["df/dv6"] * r["dv6/dv3"], "path v5": r["df/dv5"] * r["dv5/dv3"]}
    r["df/dv3"] = r["path v6"] + r["path v5"]
    r["df/dx"] = r["df/dv3"] * 2 * r["x"]

    fwd, bwd = "Forward pass", "Backward pass (two paths into v3)"
    spec = [
        (fwd, "x", "Input", "x", values),
        (fwd, "v3", "Square", "v3 = x^2", values),
        (fwd, "v5", "Scale", "v5 = 2 v3", values),
        (fwd, "v6", "Shift", "v6 = v3 + 1", values),
        (fwd, "f", "Output", "f = v5 v6", values),
        (bwd, "df/dv5", "Local (product)", "df/dv5 = v6", values),
        (bwd, "df/dv6", "Local (product)", "df/dv6 = v5", values),
        (bwd, "dv5/dv3", "Local (scale)", "dv5/dv3 = 2", r),
        (bwd, "dv6/dv3", "Local (shift)", "dv6/dv3 = 1", r),
        (bwd, "path v6", "Path through v6", "df/dv6 dv6/dv3", r),
        (bwd, "path v5", "Path through v5", "df/dv5 dv5/dv3", r),
        (bwd, "df/dv3", "Accumulated", "df/dv3 = sum of both paths (v3.grad)", values),
        (bwd, "df/dx", "Input gradient", "df/dx = df/dv3 2x", values),
    ]
    rows = [
        Row(step, section, key, quantity, expression, source[key])
        for step, (section, key, quantity, expression, source) in enumerate(spec, start=1)
    ]
    title = "Section 2.10: chain-rule accumulation when a node feeds two others"
    return Walkthrough(title, rows, values, r, "the chain rule summed by hand")


def quadratic_hvp(
    w: Sequence[float] = (1.0, 2.0), u: Sequence[float] = (1.0, -1.0)
) -> Walkthrough:
    """Section 2.11.1: Hu for f(w) = w1^2 + 3 w1 w2 + 2 w2^2 by two backward passes.

    Hu = grad_w (grad f(w)^T u); the Hessian [[2, 3], [3, 4]] is constant, so with
    u = (1, -1) the product is (-1, -1) at every w.

    Args:
        w: the point (w1, w2).
        u: the direction.

    Returns:
        The table, with autograd's values and the hand-derived gradient, Hessian and product.
    """
    w_t = torch.tensor(list(w), dtype=_f64, requires_grad=True)
    u_t = torch.tensor(list(u), dtype=_f64)

    # First backward pass with create_graph, so the gradient can itself be differentiated.
    f = w_t[0] ** 2 + 3 * w_t[0] * w_t[1] + 2 * w_t[1] ** 2
    (grad,) = torch.autograd.grad(f, w_t, create_graph=True)
    s = grad @ u_t
    (Hu,) = torch.autograd.grad(s, w_t)
    values = {"w": w_t.detach(), "u": u_t, "f": f.detach(), "grad f": grad.detach()}
    values |= {"s": s.detach(), "Hu": Hu}

    # The guide's closed forms: grad f = (2 w1 + 3 w2, 3 w1 + 4 w2), H = [[2, 3], [3, 4]].
    w1, w2 = float(w[0]), float(w[1])
    H = torch.tensor([[2.0, 3.0], [3.0, 4.0]], dtype=_f64)
    r = {"f": _scalar(w1**2 + 3 * w1 * w2 + 2 * w2**2)}
    r["grad f"] = torch.tensor([2 * w1 + 3 * w2, 3 * w1 + 4 * w2], dtype=_f64)
    r |= {"H": H, "Hu": H @ u_t, "s": r["grad f"] @ u_t}

    given, first, second = "Point and direction", "First backward pass", "Second backward pass"
    spec = [
        (given, "w", "Point", "w = (w_1, w_2)", values),
        (given, "u", "Direction", "u", values),
        (given, "f", "Function", "f = w_1^2 + 3 w_1 w_2 + 2 w_2^2", values),
        (first, "grad f", "Gradient", "grad f = (2 w_1 + 3 w_2, 3 w_1 + 4 w_2)", values),
        (first, "s", "Scalar projection", "s = grad f^T u", values),
        (second, "H", "Hessian (by hand)", "H = [[2, 3], [3, 4]]", r),
        (second, "Hu by hand", "Product (by hand)", "H u", {"Hu by hand": r["Hu"]}),
        (second, "Hu", "Hessian-vector product", "Hu = grad_w s (second backward)", values),
    ]
    rows = [
        Row(step, section, key, quantity, expression, source[key])
        for step, (section, key, quantity, expression, source) in enumerate(spec, start=1)
    ]
    title = "Section 2.11.1: Hessian-vector product by a second backward pass"
    return Walkthrough(title, rows, values, r, "the hand-derived gradient and Hessian")
