"""The timm ViT built from the guide's symbols, its checks and its attention switch."""

from __future__ import annotations

import pytest
import torch
from timm.layers import Attention

from curvlab.models import ViT


def test_guide_symbols_reach_timm() -> None:
    model = ViT((3, 16, 16), 5, patch_size=4, embed_dim=48, depth=3, num_heads=6, mlp_ratio=2.0)
    net = model.net

    assert len(net.blocks) == 3
    assert net.patch_embed.num_patches == 16
    assert net.cls_token is not None and net.pos_embed.shape == (1, 17, 48)
    assert net.blocks[0].attn.num_heads == 6 and net.blocks[0].attn.head_dim == 8
    assert net.blocks[0].mlp.fc1.out_features == 96
    assert model.forward_tokens(torch.zeros(2, 3, 16, 16)).shape == (2, 17, 48)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 5)


def test_without_class_token_patches_are_averaged() -> None:
    model = ViT((1, 8, 8), 10, patch_size=2, class_token=False)

    assert model.net.cls_token is None
    assert model.forward_tokens(torch.zeros(1, 1, 8, 8)).shape == (1, 16, 64)


def test_math_and_sdpa_attention_agree_and_only_math_has_second_derivatives() -> None:
    torch.manual_seed(0)
    fused = ViT((1, 8, 8), 10, attention="sdpa")
    plain = ViT((1, 8, 8), 10, attention="math")
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(4, 1, 8, 8)

    assert all(m.fused_attn for m in fused.modules() if isinstance(m, Attention))
    assert not any(m.fused_attn for m in plain.modules() if isinstance(m, Attention))
    torch.testing.assert_close(fused(x), plain(x), rtol=1e-5, atol=1e-5)

    # Double backward through plain attention works: a Hessian-vector product.
    params = [p for p in plain.parameters() if p.requires_grad]
    (g,) = torch.autograd.grad(plain(x).square().sum(), params[:1], create_graph=True)
    (hv,) = torch.autograd.grad((g * torch.ones_like(g)).sum(), params[:1])
    assert torch.isfinite(hv).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"embed_dim": 100, "num_heads": 3}, r"model.embed_dim=100 .* model.num_heads=3"),
        ({"patch_size": 3}, r"model.patch_size=3 does not divide the image size 8"),
        (
            {"attention": "flash"},
            r"model.attention='flash' is not valid; choose one of sdpa, math",
        ),
    ],
)
def test_bad_shapes_are_refused_with_both_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ViT((1, 8, 8), 10, **kwargs)
