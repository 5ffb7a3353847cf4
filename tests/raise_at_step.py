"""A callback that fails a training run on purpose (tests/test_run_lifecycle.py, through `+callbacks.raise_at=`)."""

from __future__ import annotations

import lightning as L


class RaiseAtStep(L.Callback):
    """Raise RuntimeError in method step `step` (1-based): `where=between` once it has ended,
    `where=mid` between its discriminator and generator updates."""

    def __init__(self, step: int, where: str = "between"):
        self.step, self.where = step, where

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.where == "between" and pl_module.completed_steps == self.step:
            raise RuntimeError(f"planted failure after step {self.step}")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.where == "mid" and pl_module.completed_steps == self.step - 1 and optimizer is trainer.optimizers[0]:
            raise RuntimeError(f"planted failure in step {self.step}")  # G's update: D's has been applied
