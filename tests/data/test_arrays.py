"""Splits are fixed by their seed; the global batch is shared out across processes."""

from __future__ import annotations

import pytest
import torch

from curvlab.data import ArrayDataModule, DigitsDataModule


def _indices(dm: ArrayDataModule, loader) -> list[int]:
    # Examples are the row index itself (see _numbered), so a batch names its rows.
    return [int(i) for batch, _ in loader for i in batch.flatten()]


def _numbered(n: int = 100, **kwargs) -> ArrayDataModule:
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    return ArrayDataModule(x, torch.zeros(n, dtype=torch.long), **kwargs)


def test_digits_split_is_disjoint_complete_and_seeded() -> None:
    dm = DigitsDataModule(split_seed=0)
    sets = [set(s.indices) for s in (dm.train_set, dm.val_set, dm.test_set)]

    assert [len(s) for s in sets] == [1257, 270, 270]
    assert set.union(*sets) == set(range(1797))
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert DigitsDataModule(split_seed=0).val_set.indices == dm.val_set.indices
    assert DigitsDataModule(split_seed=1).val_set.indices != dm.val_set.indices
    assert dm.input_shape == (1, 8, 8) and dm.num_classes == 10
    assert float(dm.x.min()) == 0.0 and float(dm.x.max()) == 1.0


def test_global_batch_is_split_evenly_across_processes() -> None:
    dm = _numbered(batch_size=8, val_fraction=0.1, test_fraction=0.1, seed=3)
    single = _indices(dm, dm.train_dataloader(topology=(1, 0)))
    rank0 = list(dm.train_dataloader(topology=(2, 0)))
    rank1 = list(dm.train_dataloader(topology=(2, 1)))

    # Each process loads half the global batch, and together they cover the epoch once.
    assert dm.per_process_batch_size(2) == 4
    assert all(len(x) == 4 for x, _ in rank0[:-1])
    assert len(single) == 80 and len(rank0) == len(rank1) == 80 // 8
    together = _indices(dm, rank0) + _indices(dm, rank1)
    assert sorted(together) == sorted(single) == sorted(int(i) for i in dm.train_set.indices)


def test_batch_size_must_divide_among_processes() -> None:
    dm = _numbered(batch_size=10)
    with pytest.raises(ValueError, match=r"data.batch_size=10 .* divisible by the number of"):
        dm.per_process_batch_size(4)


def test_epoch_order_depends_only_on_seed_and_epoch() -> None:
    dm = _numbered(batch_size=8, seed=5)
    loader = dm.train_dataloader(topology=(1, 0))
    loader.sampler.set_epoch(1)
    first = _indices(dm, loader)
    loader.sampler.set_epoch(2)
    second = _indices(dm, loader)
    again = dm.train_dataloader(topology=(1, 0))
    again.sampler.set_epoch(1)

    assert first != second
    assert _indices(dm, again) == first


def test_measurement_batch_is_fixed_and_held_out_of_training() -> None:
    dm = DigitsDataModule(measurement_size=32)
    x, y = dm.measurement_batch()
    x2, _ = dm.measurement_batch()

    assert x.shape == (32, 1, 8, 8) and y.shape == (32,)
    assert torch.equal(x, x2)
    assert not set(dm.val_set.indices[:32]) & set(dm.train_set.indices)
