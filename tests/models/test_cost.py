"""The guide's ViT cost model (chapter 4) against section 4.7 and against torch's own counts."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from curvlab.models import ViT
from curvlab.models.cost import (
    bytes_per_element,
    cost_of,
    count_parameters,
    vit_cost,
    vit_cost_params,
)

# Small ViTs on 8x8 one-channel images (the digits): (P, D, L, h, r).
SMALL = [(2, 64, 2, 4, 4.0), (1, 48, 3, 3, 2.5), (4, 32, 1, 2, 4.0), (8, 16, 2, 1, 1.0)]
GUIDE = dict(height=224, width=224, channels=3, embed_dim=192, depth=12, num_heads=3)


def _vit(P: int, D: int, L: int, h: int, r: float, **kwargs: object) -> ViT:
    torch.manual_seed(0)
    return ViT(
        (1, 8, 8), 10, patch_size=P, embed_dim=D, depth=L, num_heads=h, mlp_ratio=r, **kwargs
    )


def _cpu_sdpa_flops(
    q_shape: torch.Size, k_shape: torch.Size, v_shape: torch.Size, *args: Any, **kwargs: Any
) -> int:
    # torch's counter knows the GPU attention kernels but not the CPU one; count it with the
    # counter's own attention formula.
    return sdpa_flop_count(q_shape, k_shape, v_shape)


def _counted_flops(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, int, int]:
    """(total, attention, MLP) forward FLOPs as FlopCounterMode counts them."""
    cpu_sdpa = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    counter = FlopCounterMode(display=False, custom_mapping={cpu_sdpa: _cpu_sdpa_flops})
    with counter, torch.no_grad():
        model(x)
    counts = counter.get_flop_counts()
    attention_ops = ("bmm", "scaled_dot_product")
    attention = sum(
        n for op, n in counts["Global"].items() if any(a in str(op) for a in attention_ops)
    )
    mlp = sum(sum(ops.values()) for name, ops in counts.items() if name.endswith(".mlp"))
    return counter.get_total_flops(), attention, mlp


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor, autocast: bool = False) -> int:
    """Bytes autograd saves for backward in one forward pass, parameters excluded.

    Tensors are deduplicated by storage and a view counts its whole storage, since that is
    what the view keeps alive.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with hooks, torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model(x)
    return sum(storages.values())


def test_section_4_7_numbers() -> None:
    cost = vit_cost(**GUIDE, patch_size=16, mlp_ratio=4.0, num_classes=1000)

    # Eqs. 4.10-4.13.
    assert cost.patch_tokens == 196
    assert cost.tokens == 197
    assert cost.head_dim == 64
    assert cost.attention_entries_per_layer == 116_427
    assert cost.attention_entries == 12 * 116_427
    assert cost.attention_modules == 12
    assert cost.mlp_width == 768

    # P = 8: 785 tokens and "approximately 1.85 million entries per layer".
    fine = vit_cost(**GUIDE, patch_size=8, mlp_ratio=4.0, num_classes=1000)
    assert fine.tokens == 785
    assert fine.attention_entries_per_layer == 1_848_675
    assert round(fine.attention_entries_per_layer / 1e6, 2) == 1.85


def test_without_class_token_n_is_the_patch_count() -> None:
    cost = vit_cost(**GUIDE, patch_size=16, mlp_ratio=4.0, num_classes=1000, class_token=False)
    assert (cost.patch_tokens, cost.tokens, cost.attention_entries_per_layer) == (
        196,
        196,
        115_248,
    )


def test_vit_tiny_matches_timm_own_model() -> None:
    # timm's registered ViT-Ti/16 is the section 4.7 model at depth 12 with 1000 classes.
    with torch.device("meta"):
        reference = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    cost = vit_cost(**GUIDE, patch_size=16, mlp_ratio=4.0, num_classes=1000)
    assert cost.params == count_parameters(reference) == 5_717_416


@pytest.mark.parametrize("class_token", [True, False])
@pytest.mark.parametrize(("P", "D", "L", "h", "r"), SMALL)
def test_parameter_count_is_exact(
    P: int, D: int, L: int, h: int, r: float, class_token: bool
) -> None:
    model = _vit(P, D, L, h, r, class_token=class_token)
    assert cost_of(model).params == count_parameters(model)


def test_parameter_count_without_head() -> None:
    # num_classes = 0 makes timm drop the head.
    model = ViT((3, 16, 16), 0, patch_size=4, embed_dim=24, depth=2, num_heads=2)
    assert cost_of(model).params == count_parameters(model)


@pytest.mark.parametrize("attention", ["math", "sdpa"])
@pytest.mark.parametrize("class_token", [True, False])
@pytest.mark.parametrize(("P", "D", "L", "h", "r"), SMALL)
def test_flops_match_torch_flop_counter(
    P: int, D: int, L: int, h: int, r: float, class_token: bool, attention: str
) -> None:
    model = _vit(P, D, L, h, r, class_token=class_token, attention=attention).eval()
    B = 3
    total, attention_flops, mlp_flops = _counted_flops(model, torch.randn(B, 1, 8, 8))
    cost = cost_of(model)

    # The spec allows 2%; the closed form counts the same matrix products, so it is exact.
    assert total > 0 and abs(B * cost.flops_forward - total) <= 0.02 * total
    assert B * cost.flops_forward == total
    assert B * cost.flops_attention == attention_flops
    assert B * cost.flops_mlp == mlp_flops
    assert B * cost.flops_projections == total - attention_flops - mlp_flops


@pytest.mark.parametrize("attention", ["math", "sdpa"])
def test_flops_of_the_guide_model_match_flop_counter(attention: str) -> None:
    # On the meta device nothing is computed, so a 224x224 ViT-Ti costs no time (there sdpa
    # runs as its math decomposition, so both settings are counted through bmm).
    with torch.device("meta"):
        model = ViT(
            (3, 224, 224),
            1000,
            patch_size=16,
            embed_dim=192,
            depth=12,
            num_heads=3,
            attention=attention,
        )
        total, _, _ = _counted_flops(model, torch.empty(1, 3, 224, 224))
    assert cost_of(model).flops_forward == total == 2_507_366_400


@pytest.mark.parametrize("attention", ["math", "sdpa"])
@pytest.mark.parametrize("class_token", [True, False])
@pytest.mark.parametrize(("P", "D", "L", "h", "r"), SMALL[:3])
def test_activation_memory_matches_saved_tensors(
    P: int, D: int, L: int, h: int, r: float, class_token: bool, attention: str
) -> None:
    model = _vit(P, D, L, h, r, class_token=class_token, attention=attention).train()
    B = 5
    measured = _saved_bytes(model, torch.randn(B, 1, 8, 8))
    estimate = cost_of(model, batch_size=B, precision="32-true").activation_bytes

    # The closed form enumerates what the CPU kernels save, so it agrees to the byte.
    assert estimate == measured


def test_math_attention_stores_the_n_by_n_matrices() -> None:
    math = _vit(2, 64, 2, 4, 4.0, attention="math")
    sdpa = _vit(2, 64, 2, 4, 4.0, attention="sdpa")
    B, L, h, N = 4, 2, 4, 17

    # Eq. 4.6: the softmax of every head is kept by math; a fused kernel keeps h values/token.
    difference = cost_of(math, B).activation_elements - cost_of(sdpa, B).activation_elements
    assert difference == L * (h * N * N - h * N)


@pytest.mark.parametrize(("P", "D", "L", "h", "r"), SMALL[:3])
def test_mixed_precision_estimate_is_a_lower_bound(
    P: int, D: int, L: int, h: int, r: float
) -> None:
    model = _vit(P, D, L, h, r, attention="math").train()
    B = 5
    measured = _saved_bytes(model, torch.randn(B, 1, 8, 8), autocast=True)
    estimate = cost_of(model, batch_size=B, precision="bf16-mixed").activation_bytes

    # Autocast keeps the residual stream and norm statistics in float32 and saves bf16
    # weight copies, so 2 bytes per element undercounts (measured 1.2x to 2x here).
    assert estimate <= measured
    assert estimate == cost_of(model, batch_size=B).activation_bytes // 2


def test_bytes_per_element() -> None:
    assert [bytes_per_element(p) for p in ("32-true", 32, "16-mixed", "bf16-mixed")] == [
        4,
        4,
        2,
        2,
    ]
    assert bytes_per_element("64-true") == 8
    with pytest.raises(ValueError, match=r"trainer\.precision=transformer-engine"):
        bytes_per_element("transformer-engine")


def test_bad_shapes_name_the_keys() -> None:
    with pytest.raises(ValueError, match=r"model\.embed_dim=100 .* model\.num_heads=3"):
        vit_cost(**{**GUIDE, "embed_dim": 100}, patch_size=16, mlp_ratio=4.0, num_classes=10)
    with pytest.raises(ValueError, match=r"model\.patch_size=5"):
        vit_cost(**GUIDE, patch_size=5, mlp_ratio=4.0, num_classes=10)
    with pytest.raises(ValueError, match=r"model\.attention='flash'"):
        vit_cost(**GUIDE, patch_size=16, mlp_ratio=4.0, num_classes=10, attention="flash")


def test_vit_cost_params_for_the_digits_default() -> None:
    # conf/model/vit.yaml on the digits: P=2, D=64, L=4, h=4, r=4, [CLS], sdpa.
    model = ViT((1, 8, 8), 10, patch_size=2, embed_dim=64, depth=4, num_heads=4)
    params = vit_cost_params(model, batch_size=64, precision="bf16-mixed")

    assert all(key.startswith("cost/") for key in params)
    assert all(isinstance(value, int) for value in params.values())
    assert params["cost/patch_tokens"] == 16
    assert params["cost/tokens"] == 17
    assert params["cost/head_dim"] == 16
    assert params["cost/attention_entries_per_layer"] == 4 * 17 * 17
    assert params["cost/attention_entries"] == 4 * 4 * 17 * 17
    assert params["cost/mlp_width"] == 256
    assert params["cost/params"] == count_parameters(model) == 202_186
    assert params["cost/flops_forward"] == (
        params["cost/flops_attention"]
        + params["cost/flops_projections"]
        + params["cost/flops_mlp"]
    )
    assert params["cost/flops_attention"] == 4 * (4 * 17 * 17 * 64)
    assert params["cost/bytes_per_element"] == 2
    assert params["cost/batch_size"] == 64
    assert params["cost/activation_bytes"] == 64 * 2 * cost_of(model).activation_elements


def test_vit_cost_params_warns_about_dropout(caplog: pytest.LogCaptureFixture) -> None:
    model = ViT((1, 8, 8), 10, patch_size=2, embed_dim=16, depth=1, num_heads=2, drop_rate=0.1)
    with caplog.at_level(logging.WARNING, logger="curvlab.models.cost"):
        vit_cost_params(model, batch_size=8, precision="32-true")
    assert "dropout masks" in caplog.text
