"""SeqKD: supervised fine-tuning of the student on the teacher's responses (GAD's baseline and warm-up)."""

from __future__ import annotations

from typing import Any

from gad.methods.base import DistillModule


class SeqKDModule(DistillModule):
    def __init__(
        self,
        student,
        tokenizer,
        *,
        steps: int = 2400,
        micro_batch_size: int = 8,
        generator_optimizer,
        generator_scheduler,
        generator_grad_clip: float | None = 1.0,
        seed: int = 0,
        profile: bool = False,
        lora=None,
        max_tokens_per_micro_batch: int | None = None,
    ):
        super().__init__(
            student,
            tokenizer,
            generator_optimizer=generator_optimizer,
            generator_scheduler=generator_scheduler,
            generator_grad_clip=generator_grad_clip,
            micro_batch_size=micro_batch_size,
            seed=seed,
            profile=profile,
            lora=lora,  # model.lora.generator only: SeqKD has no discriminator
            max_tokens_per_micro_batch=max_tokens_per_micro_batch,
        )
        self.steps = steps

    @property
    def total_steps(self) -> int:
        return self.steps

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, float]:
        metrics = self.sft_step(batch)
        metrics["train/teacher_len"] = batch["response_mask"].sum(-1).float().mean()
        return self.end_step(metrics, batch)
