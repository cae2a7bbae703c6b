"""Sections 3.5-3.6 of the guide: a 2 -> 2 -> 2 -> 1 network and the gradient w.r.t. the input.

Section 3.6 prints 8 decimals; where those are right they are asserted to 1e-8. Besides the
rows ERRATA lists (sigma'(z_3), L and grad_x L of 3.5.6), section 3.6.3 prints dL/dz_3 as
-0.06748670 where (-0.31355228)(0.21523725) = -0.06748813, which shifts its dL/da_2 and
dL/dz_2; section 3.5.6 prints dL/da_2 = (-0.094506, 0.053988) and dL/da_1 =
(-0.001435, 0.002267). Those rows assert the float64 values.
"""

from __future__ import annotations

import pytest
import torch

from curvlab.guide import NetworkSpec, autograd_trace


def _close(value: torch.Tensor, expected: list, abs_tol: float) -> None:
    assert value.flatten().tolist() == pytest.approx(expected, abs=abs_tol)


def test_section_3_5_3_forward_pass(run) -> None:
    values = run("vector_3_5").values

    _close(values["z_1"], [4.1, 0.3], 1e-12)
    _close(values["a_1"], [4.1, 0.3], 1e-12)
    _close(values["z_2"], [2.56, 4.50], 1e-12)
    _close(values["a_2"], [0.98811896, 0.99975321], 1e-8)
    _close(values["z_3"], [0.78356397], 1e-8)
    _close(values["yhat"], [0.68644772], 1e-8)
    # ERRATA: section 3.5.3 leaves L unevaluated; 1/2 (0.686448 - 1)^2 = 0.049158.
    assert float(values["L"]) == pytest.approx(0.049158, abs=1e-6)


def test_sections_3_5_4_and_3_6_2_local_derivatives(run) -> None:
    values = run("vector_3_5").values

    _close(values["dL/dyhat"], [-0.31355228], 1e-8)
    # ERRATA: section 3.5.4 prints 0.215271; section 3.6.2's 0.21523725 is right.
    _close(values["act'(z_3)"], [0.21523725], 1e-8)
    _close(values["act'(z_2)"], [0.02362093, 0.00049352], 1e-8)
    _close(values["act'(z_1)"], [1.0, 1.0], 0.0)


def test_section_3_5_5_explicit_jacobians(run) -> None:
    values = run("vector_3_5").values

    _close(values["J_1"], [1.0, 2.0, -0.5, 1.5], 0.0)
    _close(values["J_2"], [0.016535, -0.028345, 0.000543, 0.000148], 1e-6)
    _close(values["J_3"], [0.301332, -0.172190], 1e-6)


def test_sections_3_5_6_and_3_6_3_backward_to_the_input(run) -> None:
    values = run("vector_3_5").values

    # Section 3.6.3 prints -0.06748670; the product of its own factors is -0.06748813.
    _close(values["delta_3"], [-0.06748813], 1e-8)
    # Printed (-0.094506, 0.053988) in 3.5.6 and (-0.09448138, 0.05398936) in 3.6.3.
    _close(values["dL/da_2"], [-0.094483, 0.053991], 1e-6)
    # Section 3.6.3 prints (-0.00223199, 0.00002664): right to 6 decimals only.
    _close(values["delta_2"], [-0.002232, 0.000027], 1e-6)
    # Section 3.6.3 steps 4-5 (section 3.5.6 prints (-0.001435, 0.002267)).
    _close(values["dL/da_1"], [-0.00153294, 0.00268614], 1e-8)
    _close(values["delta_1"], [-0.00153294, 0.00268614], 1e-8)
    # ERRATA: section 3.5.6 prints (-0.002876, 0.000531); section 3.6.3 has it right.
    _close(values["dL/dx"], [-0.00287601, 0.00096332], 1e-8)


def test_input_gradient_is_the_last_row(run) -> None:
    result = run("vector_3_5")

    last = result.rows[-1]
    assert (last.step, last.symbol, last.quantity) == (27, "dL/dx", "Prop to x")
    assert result.max_abs_diff < 1e-12


def test_gradients_match_central_differences(example_config) -> None:
    # A third, derivative-free reference: central differences of the loss in float64.
    spec = NetworkSpec.from_config(example_config("vector_3_5"))
    values = autograd_trace(spec)

    def loss(x: torch.Tensor, W: list[torch.Tensor]) -> float:
        probe = NetworkSpec(tuple(W), spec.b, spec.activations, x, spec.y, spec.loss)
        return float(autograd_trace(probe)["L"])

    h = 1e-6
    for i in range(2):
        e = torch.zeros(2, dtype=torch.float64)
        e[i] = h
        fd = (loss(spec.x + e, list(spec.W)) - loss(spec.x - e, list(spec.W))) / (2 * h)
        assert fd == pytest.approx(float(values["dL/dx"][i]), abs=1e-9)

    for k, W in enumerate(spec.W):
        for idx in [(0, 0), (W.shape[0] - 1, W.shape[1] - 1)]:
            E = torch.zeros_like(W)
            E[idx] = h
            plus = [W + E if j == k else V for j, V in enumerate(spec.W)]
            minus = [W - E if j == k else V for j, V in enumerate(spec.W)]
            fd = (loss(spec.x, plus) - loss(spec.x, minus)) / (2 * h)
            assert fd == pytest.approx(float(values[f"dL/dW_{k + 1}"][idx]), abs=1e-9)
