"""What a training step hands to the callbacks: its `Phase`, a `StepRecord`, and the `TrainingModule` protocol
(what callbacks may read from a method's module).

Every method's `training_step` ends in `DistillModule.end_step`, which logs the step's metrics and
sets `module.last_step` to the step's `StepRecord`; callbacks read that in `on_train_batch_end`
(Lightning's `outputs` there is the same metrics dict, `StepRecord.metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # only annotations: the analysis reads `Phase` without importing torch
    import torch

    from gad.rollout import Rollout


class Phase(Enum):
    """A GAD step's phase: its `label` (summary tables, rollouts.jsonl) and the `code` it is logged
    as (`train/phase`: loggers take numbers, and runs and analyses read them)."""

    WARMUP = "warmup", 0.0  # SeqKD on the teacher responses (and D learning to tell them apart)
    D_ON_FROZEN_G = "d_on_frozen_g", 0.5  # the off-policy ablation: D trains alone on the warmed-up student
    ADVERSARIAL = "adversarial", 1.0  # the policy gradient, rewarded by D

    def __init__(self, label: str, code: float):
        self.label, self.code = label, code

    @classmethod
    def from_code(cls, code: float) -> Phase:
        """The phase a logged `train/phase` value stands for (the nearest code: loggers may round)."""
        return min(cls, key=lambda phase: abs(phase.code - code))


@dataclass
class Scores:
    """Discriminator outputs before its update: teacher [B], student [B, N]."""

    teacher: torch.Tensor
    student: torch.Tensor


@dataclass
class StepRecord:
    """One completed training step, as `DistillModule.end_step` leaves it in `module.last_step`."""

    step: int  # method steps completed, this one included (1 after the first)
    phase: Phase | None  # GAD's phase; None for methods without phases (SeqKD, KD)
    metrics: dict[str, float]  # what the step logged (Lightning's `outputs` of on_train_batch_end)
    batch: dict[str, Any]  # the batch of prompts and teacher responses it trained on
    rollout: Rollout | None = None  # GAD's samples from the student (None for SeqKD and KD)
    scores: Scores | None = None  # D's scores of the teacher responses and the samples (GAD)


class TrainingModule(Protocol):
    """What the callbacks (gad.callbacks, gad.toy.accuracy) read from a method's module: every
    `gad.methods.DistillModule` is one. Callbacks type against this, not against the module's internals."""

    completed_steps: int  # method steps done (restored on resume)
    last_step: StepRecord | None  # the step just completed (set by `end_step`)
    generator: Any  # the student network (a transformers causal LM)
    tokenizer: Any  # the student's tokenizer
    eos_ids: list[int]  # the tokens that end a response

    @property
    def total_steps(self) -> int: ...  # the method's planned steps

    def phase_name(self) -> str: ...  # what the progress line calls the next step's phase

    def export_student(self, directory: str | Path, resume: Path | None = None) -> Path: ...  # a Hugging Face folder
