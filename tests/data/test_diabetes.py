"""The diabetes regression data: standardised by the training split only."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_diabetes

from curvlab.data import DiabetesDataModule


def test_shapes_and_split_sizes() -> None:
    data = DiabetesDataModule()

    assert data.x.shape == (442, 10) and data.y.shape == (442, 1)
    assert data.input_shape == (10,)
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (310, 66, 66)


def test_the_training_split_is_standardised_and_the_units_come_back() -> None:
    data = DiabetesDataModule()
    train = torch.as_tensor(data.train_set.indices)
    raw = torch.tensor(load_diabetes(scaled=False).target, dtype=torch.float32)

    assert torch.allclose(data.x[train].mean(0), torch.zeros(10), atol=1e-5)
    assert torch.allclose(data.x[train].std(0), torch.ones(10), atol=1e-5)
    assert data.target_mean == pytest.approx(raw[train].mean().item(), rel=1e-6)
    assert data.target_std == pytest.approx(raw[train].std().item(), rel=1e-6)
    restored = data.y[:, 0] * data.target_std + data.target_mean
    assert torch.allclose(restored, raw, atol=1e-3)


def test_raw_values_when_not_standardised() -> None:
    data = DiabetesDataModule(standardize=False)

    assert (data.target_mean, data.target_std) == (0.0, 1.0)
    assert data.y.min().item() == 25.0 and data.y.max().item() == 346.0
