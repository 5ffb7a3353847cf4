"""Checkpoints on the method's own step counter (Lightning's global_step counts optimizer steps)."""

from __future__ import annotations

from pathlib import Path

import lightning as L


class StepCheckpoint(L.Callback):
    """Writes `step_<k>.ckpt` every `every_n_steps` method steps, and `last.ckpt` then and at the end."""

    def __init__(self, dirpath: str, every_n_steps: int = 50, save_last: bool = True):
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.save_last = save_last

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = pl_module.completed_steps
        periodic = self.every_n_steps > 0 and step % self.every_n_steps == 0
        if periodic:
            trainer.save_checkpoint(self.dirpath / f"step_{step:06d}.ckpt")
        if self.save_last and (periodic or trainer.should_stop):
            trainer.save_checkpoint(self.dirpath / "last.ckpt")
