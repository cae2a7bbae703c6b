"""A test-only Lightning callback: every rank saves its own copy of the weights when fit ends.

DDP keeps one model per process; the checkpoint holds only rank zero's. The pod tests add this
callback with a Hydra override (``+callbacks.rank_weights=...``) and put this directory on
PYTHONPATH, then compare the files of all ranks.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback


class SaveRankWeights(Callback):
    """Save ``pl_module.model``'s state dict to ``<out_dir>/rank<global rank>.pt`` after fit.

    Args:
        out_dir: Directory the files go to; created if missing.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in pl_module.model.state_dict().items()}
        torch.save(state, self.out_dir / f"rank{trainer.global_rank}.pt")
