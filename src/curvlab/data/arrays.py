"""A Lightning data module over in-memory tensors: seeded splits, sharded seeded batches.

The batch size in the config is the *global* batch of one optimizer step. Under DDP with W
processes each process loads ``batch_size / W`` examples per step (W must divide it), so the
effective batch, and with it the learning-rate recipe, does not change with the process count.
"""

from __future__ import annotations

import logging
import math

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset

log = logging.getLogger(__name__)


class ArrayDataModule(pl.LightningDataModule):
    """Splits ``(x, y)`` into train/val/test by a fixed seed and serves per-process batches.

    Args:
        x: inputs, one example per row, e.g. ``(n, C, H, W)`` images.
        y: targets, one per row.
        batch_size: global batch per optimizer step (split across DDP processes).
        val_fraction: share of examples for validation.
        test_fraction: share of examples for the test split.
        split_seed: seed of the split; independent of the training seed.
        num_workers: data-loader worker processes per training process.
        measurement_size: size of the fixed batch returned by :meth:`measurement_batch`, drawn
            from the validation split so that it never enters the training stream.
        num_classes: number of classes for classification targets (None otherwise).
        seed: seed of the per-epoch shuffling (the run's seed).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        num_workers: int = 0,
        measurement_size: int = 256,
        num_classes: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if len(x) != len(y):
            raise ValueError(
                f"data: inputs and targets disagree in length ({len(x)} inputs, {len(y)} "
                "targets); every input needs exactly one target."
            )
        if batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size} must be a positive integer.")
        if not (
            0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1
        ):
            raise ValueError(
                f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must "
                "each lie in (0, 1) and leave examples for training (sum below 1)."
            )
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.measurement_size = measurement_size
        self.num_classes = num_classes
        self.input_shape = tuple(x.shape[1:])

        # A generator of its own keeps the split fixed whatever the training seed is.
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
        n_val = max(1, round(val_fraction * len(x)))
        n_test = max(1, round(test_fraction * len(x)))
        dataset = TensorDataset(x, y)
        self.val_set = Subset(dataset, order[:n_val].tolist())
        self.test_set = Subset(dataset, order[n_val : n_val + n_test].tolist())
        self.train_set = Subset(dataset, order[n_val + n_test :].tolist())
        self.seed = seed

    def replace_targets(self, y: torch.Tensor) -> None:
        """Serve ``y`` as the targets from now on, keeping the split (e.g. add teacher outputs)."""
        if len(y) != len(self.x):
            raise ValueError(f"new targets have {len(y)} rows for {len(self.x)} inputs.")
        self.y = y
        dataset = TensorDataset(self.x, y)
        self.train_set = Subset(dataset, self.train_set.indices)
        self.val_set = Subset(dataset, self.val_set.indices)
        self.test_set = Subset(dataset, self.test_set.indices)

    def per_process_batch_size(self, world_size: int) -> int:
        """The share of the global batch each of ``world_size`` processes loads."""
        if self.batch_size % world_size != 0:
            raise ValueError(
                f"data.batch_size={self.batch_size} is the global batch and must be divisible "
                f"by the number of processes ({world_size}); valid nearby choices are "
                f"{world_size * max(1, self.batch_size // world_size)} and "
                f"{world_size * math.ceil(self.batch_size / world_size)}."
            )
        return self.batch_size // world_size

    def _topology(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _loader(
        self, subset: Subset, shuffle: bool, topology: tuple[int, int] | None = None
    ) -> DataLoader:
        world_size, rank = topology or self._topology()

        # A DistributedSampler even for one process: its order depends only on (seed, epoch),
        # which Lightning sets each epoch, so a resumed run sees the same batches.
        sampler = DistributedSampler(
            subset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=self.seed
        )
        return DataLoader(
            subset,
            batch_size=self.per_process_batch_size(world_size),
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self, topology: tuple[int, int] | None = None) -> DataLoader:
        """Shuffled batches of this process's shard; ``topology`` is ``(world_size, rank)``,
        taken from the attached trainer when not given."""
        return self._loader(self.train_set, shuffle=True, topology=topology)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def measurement_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed batch held out of training (the first examples of the validation split)."""
        indices = self.val_set.indices[: self.measurement_size]
        return self.x[indices], self.y[indices]
