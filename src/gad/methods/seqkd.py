"""SeqKD: supervised fine-tuning of the student on the teacher's responses (GAD's baseline and warm-up)."""

from __future__ import annotations

from typing import Any

from gad.config.method import SeqKDConfig
from gad.config.model import LoraConfig
from gad.methods.base import DistillModule


class SeqKDModule(DistillModule):
    Config = SeqKDConfig

    def __init__(self, config: SeqKDConfig, student, tokenizer, lora: LoraConfig | None = None):
        super().__init__(config, student, tokenizer, lora)  # model.lora.generator only: SeqKD has no discriminator
        self.steps = config.steps

    @property
    def total_steps(self) -> int:
        return self.steps

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, float]:
        metrics = self.sft_step(batch)
        metrics["train/teacher_len"] = batch["response_mask"].sum(-1).float().mean()
        return self.end_step(metrics, batch)
