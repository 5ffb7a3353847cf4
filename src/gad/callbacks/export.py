"""Saves the trained student as a Hugging Face model folder at the end of training."""

from __future__ import annotations

import lightning as L

from gad.callbacks.checkpoint import StepCheckpoint


class ExportStudent(L.Callback):
    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a full disk's error line names the run's last.ckpt to resume from (resuming a finished run just exports)
        last = next((cb.last_path for cb in trainer.callbacks if isinstance(cb, StepCheckpoint) and cb.save_last), None)
        pl_module.export_student(self.dirpath, resume=last)  # every rank: under FSDP the weights are gathered first
