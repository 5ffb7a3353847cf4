"""Periodic rollout samples with their discriminator scores: JSONL for the notebook, and the
same samples as a table plus D-score histograms in whichever trackers the run logs to."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L

from gad.step_record import TrainingModule
from gad.trackers import log_rollouts


class RolloutSamples(L.Callback):
    """Appends up to `max_prompts` prompts of the step's rollout to `<dirpath>/rollouts.jsonl`.

    One line per prompt: step, phase, prompt id, teacher response and score, and each
    student sample with its score (in the adversarial phase, its reward) and length in tokens. The same
    samples go to the run's trackers (`gad.trackers.log_rollouts`) as a table with D-score histograms.
    """

    def __init__(self, dirpath: str, every_n_steps: int = 10, max_prompts: int = 4):
        self.path = Path(dirpath) / "rollouts.jsonl"
        self.every_n_steps, self.max_prompts = every_n_steps, max_prompts

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: TrainingModule, outputs, batch, batch_idx: int) -> None:
        record = pl_module.last_step
        if record is None or record.scores is None or not trainer.is_global_zero or record.step % self.every_n_steps:
            return  # only GAD's steps have D scores of samples
        step, batch, rollout, scores = record.step, record.batch, record.rollout, record.scores
        decode = pl_module.tokenizer.decode
        n = rollout.num_samples
        records = []
        for i in range(min(self.max_prompts, len(batch["ids"]))):
            prompt = batch["prompt_ids"][i][batch["prompt_mask"][i].bool()]
            teacher = batch["response_ids"][i][batch["response_mask"][i].bool()]
            samples = []
            for j in range(i * n, (i + 1) * n):
                tokens = rollout.response_ids[j][rollout.response_mask[j].bool()]
                samples.append(
                    {
                        "text": decode(tokens, skip_special_tokens=True),
                        "score": scores.student[i, j - i * n].item(),
                        "length": len(tokens),
                    }
                )
            records.append(
                {
                    "step": step,
                    "phase": record.phase.label,
                    "id": batch["ids"][i],
                    "prompt": decode(prompt, skip_special_tokens=False),
                    "teacher": decode(teacher, skip_special_tokens=True),
                    "teacher_score": scores.teacher[i].item(),
                    "teacher_length": len(teacher),
                    "samples": samples,
                }
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            for line in records:
                fh.write(json.dumps(line, ensure_ascii=False) + "\n")
        # Lightning's loggers put method step k at x = k - 1 (their step counts batches from 0).
        log_rollouts(trainer.loggers, records, scores.teacher, scores.student, step - 1)
