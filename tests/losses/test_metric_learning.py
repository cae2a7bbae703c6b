"""Triplet, contrastive and cosine embedding losses against float64 loops over pairs/triplets."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from curvlab.losses import BatchCosineEmbeddingLoss, BatchTripletLoss, ContrastiveLoss

CONF = Path(__file__).resolve().parents[2] / "conf" / "loss"
LABELS = [0, 0, 1, 1, 2, 2, 0, 1, 3]  # class 3 is a singleton: never an anchor with a positive


def load(name: str, **overrides: object) -> torch.nn.Module:
    return instantiate(OmegaConf.merge(OmegaConf.load(CONF / f"{name}.yaml"), overrides))


def batch(seed: int, labels: list[int] = LABELS) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(len(labels), 3, generator=g, dtype=torch.float64)
    return e, torch.tensor(labels)


def unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def batch_hard(e: list[list[float]], y: list[int], margin: float) -> float:
    losses = []
    for a in range(len(e)):
        pos = [math.dist(e[a], e[p]) for p in range(len(e)) if p != a and y[p] == y[a]]
        neg = [math.dist(e[a], e[n]) for n in range(len(e)) if y[n] != y[a]]
        if pos and neg:
            losses.append(max(0.0, max(pos) - min(neg) + margin))
    return sum(losses) / len(losses) if losses else 0.0


def batch_all(e: list[list[float]], y: list[int], margin: float) -> float:
    active = []
    for a in range(len(e)):
        for p in range(len(e)):
            for n in range(len(e)):
                if p != a and y[p] == y[a] and y[n] != y[a]:
                    v = math.dist(e[a], e[p]) - math.dist(e[a], e[n]) + margin
                    if v > 0:
                        active.append(v)
    return sum(active) / len(active) if active else 0.0


def contrastive(e: list[list[float]], y: list[int], margin: float) -> float:
    terms = []
    for i in range(len(e)):
        for j in range(i + 1, len(e)):
            d = math.dist(e[i], e[j])
            terms.append(0.5 * (d * d if y[i] == y[j] else max(0.0, margin - d) ** 2))
    return sum(terms) / len(terms)


def cosine_embedding(e: list[list[float]], y: list[int], margin: float) -> float:
    terms = []
    for i in range(len(e)):
        for j in range(i + 1, len(e)):
            cos = sum(a * b for a, b in zip(unit(e[i]), unit(e[j]), strict=True))
            terms.append(1 - cos if y[i] == y[j] else max(0.0, cos - margin))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("mining", ["batch_hard", "batch_all"])
@pytest.mark.parametrize(("margin", "normalize"), [(1.0, False), (0.3, True), (2.5, False)])
def test_triplet_mining_matches_brute_force(mining: str, margin: float, normalize: bool) -> None:
    e, y = batch(0)

    value = load("triplet", mining=mining, margin=margin, normalize=normalize)(e, y)

    rows = [unit(r) if normalize else r for r in e.tolist()]
    reference = batch_hard if mining == "batch_hard" else batch_all
    assert value.item() == pytest.approx(reference(rows, LABELS, margin), rel=1e-6, abs=1e-12)


@pytest.mark.parametrize(("margin", "normalize"), [(1.0, False), (0.5, True)])
def test_contrastive_matches_the_pair_formula(margin: float, normalize: bool) -> None:
    e, y = batch(1)

    value = load("contrastive", margin=margin, normalize=normalize)(e, y)

    rows = [unit(r) if normalize else r for r in e.tolist()]
    assert value.item() == pytest.approx(contrastive(rows, LABELS, margin), rel=1e-6)


@pytest.mark.parametrize("margin", [0.0, 0.4, -0.5])
def test_cosine_embedding_matches_the_pair_formula(margin: float) -> None:
    e, y = batch(2)

    value = load("cosine_embedding", margin=margin)(e, y)

    assert value.item() == pytest.approx(cosine_embedding(e.tolist(), LABELS, margin), rel=1e-6)


def test_one_class_batch() -> None:
    labels = [4] * 5
    e, y = batch(3, labels)
    e.requires_grad_(True)
    rows = e.tolist()

    # no negatives: no triplet exists, the loss is a graph-connected zero
    for mining in ("batch_hard", "batch_all"):
        value = BatchTripletLoss(mining=mining)(e, y)
        (grad,) = torch.autograd.grad(value, e)
        assert value.item() == 0.0
        assert torch.equal(grad, torch.zeros_like(e))

    assert ContrastiveLoss()(e, y).item() == pytest.approx(
        contrastive(rows, labels, 1.0), rel=1e-6
    )
    assert BatchCosineEmbeddingLoss()(e, y).item() == pytest.approx(
        cosine_embedding(rows, labels, 0.0), rel=1e-6
    )


def test_identical_pairs_have_zero_distance_and_finite_gradients() -> None:
    labels = [0, 0, 1, 1, 2]
    e, y = batch(4, labels)
    e = e.detach().clone()
    e[1] = e[0]  # identical positive pair
    e[4] = e[2]  # identical negative pair
    e.requires_grad_(True)
    rows = e.tolist()

    losses = {
        "hard": (BatchTripletLoss(margin=0.5), batch_hard(rows, labels, 0.5)),
        "all": (BatchTripletLoss(margin=0.5, mining="batch_all"), batch_all(rows, labels, 0.5)),
        "contrastive": (ContrastiveLoss(margin=2.0), contrastive(rows, labels, 2.0)),
        "cosine": (BatchCosineEmbeddingLoss(margin=0.1), cosine_embedding(rows, labels, 0.1)),
    }
    for name, (loss, expected) in losses.items():
        value = loss(e, y)
        (grad,) = torch.autograd.grad(value, e)
        assert value.item() == pytest.approx(expected, rel=1e-6), name
        assert torch.isfinite(grad).all(), name


def test_a_single_example_costs_nothing() -> None:
    e, y = batch(5, [7])

    for loss in (BatchTripletLoss(), ContrastiveLoss(), BatchCosineEmbeddingLoss()):
        assert loss(e, y).item() == 0.0


def test_gradients_match_finite_differences() -> None:
    e, y = batch(6)
    e.requires_grad_(True)

    losses = [
        BatchTripletLoss(margin=1.0),
        BatchTripletLoss(margin=1.0, mining="batch_all"),
        BatchTripletLoss(margin=0.3, normalize=True),
        ContrastiveLoss(margin=1.5),
        BatchCosineEmbeddingLoss(margin=0.2),
    ]
    for loss in losses:
        assert torch.autograd.gradcheck(lambda x, loss=loss: loss(x, y), (e,))


def test_bad_hyperparameters_are_refused() -> None:
    with pytest.raises(ValueError, match="mining"):
        BatchTripletLoss(mining="semi_hard")
    with pytest.raises(ValueError, match="margin"):
        BatchCosineEmbeddingLoss(margin=1.5)
