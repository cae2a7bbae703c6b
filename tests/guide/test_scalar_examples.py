"""Sections 2.10 (chain-rule accumulation) and 2.11.1 (scalar Hessian-vector product)."""

from __future__ import annotations

import pytest
import torch

from curvlab.guide import chain_rule_accumulation, quadratic_hvp


def test_section_2_10_values_at_x_3(run) -> None:
    result = run("chain_rule_2_10")

    values = {key: float(v) for key, v in result.values.items()}
    assert (values["v3"], values["v5"], values["v6"], values["f"]) == (9.0, 18.0, 10.0, 180.0)
    assert (values["df/dv5"], values["df/dv6"]) == (10.0, 18.0)
    # The two paths into v3 give 18 (through v6) and 20 (through v5); autograd sums them.
    assert float(result.row("path v6").value) == 18.0
    assert float(result.row("path v5").value) == 20.0
    assert values["df/dv3"] == 38.0
    assert result.max_abs_diff == 0.0


@pytest.mark.parametrize("x", [-1.5, 0.5, 2.0])
def test_section_2_10_matches_the_closed_form(x: float) -> None:
    # f = 2 x^2 (x^2 + 1), so df/dx = 8 x^3 + 4 x and df/dv3 = v5 + 2 v6 = 4 x^2 + 2.
    result = chain_rule_accumulation(x)

    assert float(result.values["f"]) == pytest.approx(2 * x**2 * (x**2 + 1), abs=1e-12)
    assert float(result.values["df/dx"]) == pytest.approx(8 * x**3 + 4 * x, abs=1e-12)
    assert float(result.values["df/dv3"]) == pytest.approx(4 * x**2 + 2, abs=1e-12)


def test_section_2_11_1_hu_is_minus_one_minus_one(run) -> None:
    result = run("hvp_2_11")

    assert result.values["Hu"].tolist() == [-1.0, -1.0]
    assert result.row("Hu by hand").value.tolist() == [-1.0, -1.0]
    # grad f^T u = -(w1 + w2) for u = (1, -1), at the config's w = (1, 2).
    assert float(result.values["s"]) == -3.0
    assert result.values["grad f"].tolist() == [8.0, 11.0]


@pytest.mark.parametrize("w", [(0.0, 0.0), (-2.0, 5.0), (0.3, -0.7)])
def test_section_2_11_1_hessian_is_constant(w: tuple[float, float]) -> None:
    result = quadratic_hvp(w, (1.0, -1.0))

    assert result.values["Hu"].tolist() == [-1.0, -1.0]
    assert float(result.values["s"]) == pytest.approx(-(w[0] + w[1]), abs=1e-12)


def test_hvp_matches_a_dense_hessian_for_any_direction() -> None:
    # Dense reference: the full Hessian from torch.autograd.functional, times u.
    u = (0.25, 2.0)

    result = quadratic_hvp((1.0, -3.0), u)

    def f(w: torch.Tensor) -> torch.Tensor:
        return w[0] ** 2 + 3 * w[0] * w[1] + 2 * w[1] ** 2

    w = torch.tensor([1.0, -3.0], dtype=torch.float64)
    H = torch.autograd.functional.hessian(f, w)
    expected = H @ torch.tensor(u, dtype=torch.float64)
    assert result.values["Hu"].tolist() == pytest.approx(expected.tolist(), abs=1e-12)
    assert expected.tolist() == [2 * 0.25 + 3 * 2.0, 3 * 0.25 + 4 * 2.0]
