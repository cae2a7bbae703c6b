"""The task heads: each patch token's logits land on its own patch, and nothing is left unused."""

from __future__ import annotations

import torch

from curvlab.models import MLP, ViT
from curvlab.models.heads import PatchMaskDecoder, Unflatten, ViTSegmenter


def _decoder(K: int, P: int, grid: tuple[int, int], prefix: int) -> PatchMaskDecoder:
    return PatchMaskDecoder(
        embed_dim=1, patch_size=P, grid_size=grid, num_classes=K, num_prefix_tokens=prefix
    )


def test_each_token_fills_its_own_patch_in_raster_order() -> None:
    K, P, (gh, gw) = 2, 3, (2, 4)
    decoder = _decoder(K, P, (gh, gw), prefix=1)
    with torch.no_grad():
        decoder.proj.weight.fill_(1.0)  # every logit of a token equals the token's value
        decoder.proj.bias.zero_()
    # Token n (after the prefix) carries the value n; the prefix token a large one.
    tokens = torch.cat([torch.tensor([1000.0]), torch.arange(gh * gw, dtype=torch.float32)])

    mask = decoder(tokens.view(1, -1, 1))

    assert mask.shape == (1, K, gh * P, gw * P)
    for i in range(gh):
        for j in range(gw):
            block = mask[0, :, i * P : (i + 1) * P, j * P : (j + 1) * P]
            assert torch.all(block == i * gw + j)


def test_a_tokens_logits_are_laid_out_channel_then_row_then_column() -> None:
    K, P = 2, 2
    decoder = _decoder(K, P, (1, 1), prefix=0)
    with torch.no_grad():
        decoder.proj.weight.zero_()
        decoder.proj.bias.copy_(torch.arange(K * P * P, dtype=torch.float32))

    mask = decoder(torch.zeros(1, 1, 1))

    # Logit k P P + a P + b is channel k, pixel (a, b) of the patch.
    expected = torch.arange(K * P * P, dtype=torch.float32).view(K, P, P)
    assert torch.equal(mask[0], expected)


def test_the_vit_segmenter_uses_every_parameter() -> None:
    backbone = ViT((1, 16, 16), num_outputs=10, patch_size=4, embed_dim=16, depth=1, num_heads=2)
    model = ViTSegmenter(backbone, num_classes=3)
    x = torch.randn(2, 1, 16, 16)

    model(x).square().mean().backward()

    assert model(x).shape == (2, 3, 16, 16)
    assert isinstance(backbone.net.head, torch.nn.Identity)  # the class head is gone
    assert all(p.grad is not None for p in model.parameters())


def test_unflatten_lays_a_flat_output_out_as_the_mask() -> None:
    net = MLP((1, 4, 4), num_outputs=2 * 4 * 4, hidden=[8])
    x = torch.randn(3, 1, 4, 4)

    assert torch.equal(Unflatten(net, (2, 4, 4))(x), net(x).view(3, 2, 4, 4))
