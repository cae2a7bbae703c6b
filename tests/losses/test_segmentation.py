"""Dice, IoU and Dice + BCE against float64 loops over the guide's overlap formulas (1.2.6)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from curvlab.losses import DiceBCELoss, DiceLoss, IoULoss

CONF = Path(__file__).resolve().parents[2] / "conf" / "loss"


def load(name: str, **overrides: object) -> torch.nn.Module:
    return instantiate(OmegaConf.merge(OmegaConf.load(CONF / f"{name}.yaml"), overrides))


def soft_masks(z: torch.Tensor, target: torch.Tensor) -> tuple[list, list]:
    """Per-pixel probabilities and 0/1 targets as nested lists [b][c][pixel], in float64."""
    b_size, c_size = z.shape[:2]
    z = z.reshape(b_size, c_size, -1).tolist()
    if target.dim() == 4:
        p = [[[1 / (1 + math.exp(-v)) for v in ch] for ch in img] for img in z]
        g = target.reshape(b_size, c_size, -1).tolist()
        return p, g
    labels = target.reshape(b_size, -1).tolist()
    p, g = [], []
    for img, lab in zip(z, labels, strict=True):
        per_pixel = [softmax([img[c][i] for c in range(c_size)]) for i in range(len(lab))]
        p.append([[per_pixel[i][c] for i in range(len(lab))] for c in range(c_size)])
        g.append([[float(lab[i] == c) for i in range(len(lab))] for c in range(c_size)])
    return p, g


def softmax(z: list[float]) -> list[float]:
    e = [math.exp(v - max(z)) for v in z]
    return [v / sum(e) for v in e]


def reference(p: list, g: list, kind: str, smooth: float, per_image: bool) -> float:
    """1 - mean score, from sums over pixels (and images unless per_image)."""
    groups = (
        [[(b, c)] for b in range(len(p)) for c in range(len(p[0]))]
        if per_image
        else [[(b, c) for b in range(len(p))] for c in range(len(p[0]))]
    )
    scores = []
    for group in groups:
        inter = sum(a * t for b, c in group for a, t in zip(p[b][c], g[b][c], strict=True))
        size_p = sum(a for b, c in group for a in p[b][c])
        size_g = sum(t for b, c in group for t in g[b][c])
        if kind == "dice":
            num, den = 2 * inter + smooth, size_p + size_g + smooth
        else:
            num, den = inter + smooth, size_p + size_g - inter + smooth
        scores.append(1.0 if den == 0 else num / den)
    return 1 - sum(scores) / len(scores)


def binary_case(seed: int, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(3, channels, 4, 5, generator=g, dtype=torch.float64) * 2
    return z, torch.randint(0, 2, z.shape, generator=g).to(torch.float64)


def multiclass_case(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64) * 2
    return z, torch.randint(0, 3, (2, 4, 4), generator=g)


CASES = {
    "binary": lambda: binary_case(0),
    "multilabel": lambda: binary_case(1, channels=2),
    "multiclass": lambda: multiclass_case(2),
}


@pytest.mark.parametrize("kind", ["dice", "iou"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize(("smooth", "per_image"), [(1.0, False), (0.0, True), (0.5, True)])
def test_soft_overlap_matches_the_formula(kind: str, case: str, smooth: float, per_image) -> None:
    z, target = CASES[case]()

    value = load(kind, smooth=smooth, per_image=per_image)(z, target)

    p, g = soft_masks(z, target)
    assert value.item() == pytest.approx(reference(p, g, kind, smooth, per_image), rel=1e-6)


def test_hard_masks_give_the_set_formula() -> None:
    # Dice = 2 |A ∩ B| / (|A| + |B|) and IoU = |A ∩ B| / |A ∪ B| with A, B sets of pixels
    a = {(0, 1), (1, 1), (2, 2), (3, 0)}
    b = {(1, 1), (2, 2), (2, 3)}
    pred, target = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    for i, j in a:
        pred[0, 0, i, j] = 1
    for i, j in b:
        target[0, 0, i, j] = 1

    dice = DiceLoss(smooth=0.0, from_logits=False)(pred, target)
    iou = IoULoss(smooth=0.0, from_logits=False)(pred, target)

    assert dice.item() == pytest.approx(1 - 2 * len(a & b) / (len(a) + len(b)), rel=1e-6)
    assert iou.item() == pytest.approx(1 - len(a & b) / len(a | b), rel=1e-6)


@pytest.mark.parametrize("cls", [DiceLoss, IoULoss])
def test_all_background_masks(cls) -> None:
    target = torch.zeros(2, 1, 3, 3, dtype=torch.float64)

    # empty prediction and empty target with no smoothing: defined as a perfect score, no NaN
    probabilities = torch.zeros_like(target, requires_grad=True)
    value = cls(smooth=0.0, from_logits=False, per_image=True)(probabilities, target)
    value.backward()
    assert value.item() == 0.0
    assert torch.isfinite(probabilities.grad).all()

    # confident background logits: smoothing keeps the loss near 0 instead of 1
    z = torch.full_like(target, -12.0)
    p, g = soft_masks(z, target)
    for per_image in (False, True):
        value = cls(smooth=1.0, per_image=per_image)(z, target)
        kind = "dice" if cls is DiceLoss else "iou"
        assert value.item() == pytest.approx(reference(p, g, kind, 1.0, per_image), rel=1e-6)
        assert value.item() < 1e-3


@pytest.mark.parametrize("case", sorted(CASES))
def test_dice_bce_is_the_weighted_sum(case: str) -> None:
    z, target = CASES[case]()

    value = load("dice_bce", bce_weight=0.7, dice_weight=1.3)(z, target)

    p, g = soft_masks(z, target)
    pixels = [
        (a, t)
        for img_p, img_g in zip(p, g, strict=True)
        for ch_p, ch_g in zip(img_p, img_g, strict=True)
        for a, t in zip(ch_p, ch_g, strict=True)
    ]
    if case == "multiclass":
        # cross entropy per pixel: -log of the true class's probability
        ce = -sum(math.log(a) for a, t in pixels if t == 1) / (len(pixels) / z.shape[1])
    else:
        ce = -sum(t * math.log(a) + (1 - t) * math.log(1 - a) for a, t in pixels) / len(pixels)
    expected = 0.7 * ce + 1.3 * reference(p, g, "dice", 1.0, False)
    assert value.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_match_finite_differences(case: str) -> None:
    z, target = CASES[case]()
    z.requires_grad_(True)

    for loss, per_image in itertools.product((DiceLoss, IoULoss), (False, True)):
        fn = loss(smooth=0.5, per_image=per_image)
        assert torch.autograd.gradcheck(lambda x, fn=fn: fn(x, target), (z,))
    combined = DiceBCELoss(bce_weight=0.5, dice_weight=2.0)
    assert torch.autograd.gradcheck(lambda x: combined(x, target), (z,))


def test_one_channel_prediction_reads_class_indices_as_a_mask() -> None:
    z, mask = binary_case(5)
    indices = mask[:, 0].long()  # (B, H, W) of 0/1

    for loss in (DiceLoss(), IoULoss(), DiceBCELoss()):
        assert loss(z, indices).item() == pytest.approx(loss(z, mask).item(), rel=1e-12)


def test_mismatched_shapes_are_refused() -> None:
    z = torch.zeros(2, 3, 4, 4)

    with pytest.raises(ValueError, match="class indices"):
        DiceLoss()(z, torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, C, \*spatial\)"):
        IoULoss()(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="class indices"):
        DiceBCELoss()(z, torch.zeros(2, 4, 5, dtype=torch.long))
