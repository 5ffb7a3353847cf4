"""Saves the trained student as a Hugging Face model folder at the end of training."""

from __future__ import annotations

import lightning as L


class ExportStudent(L.Callback):
    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.export_student(self.dirpath)  # every rank: under FSDP the weights are gathered first
