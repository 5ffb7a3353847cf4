"""Periodic rollout samples with their discriminator scores: JSONL for the notebook, and the
same samples as a table plus D-score histograms in whichever trackers the run logs to."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

from gad.methods.gad import phase_name

TABLE_COLUMNS = ["step", "phase", "id", "prompt", "response", "role", "D score", "length"]


def table_rows(records: list[dict]) -> list[list]:
    """Rollout records -> rows of `TABLE_COLUMNS`: per prompt, the teacher's response, then each sample."""
    rows = []
    for rec in records:
        head = [rec["step"], rec["phase"], rec["id"], rec["prompt"]]
        rows.append([*head, rec["teacher"], "teacher", rec["teacher_score"], rec["teacher_length"]])
        rows.extend([*head, s["text"], "student", s["score"], s["length"]] for s in rec["samples"])
    return rows


def markdown_table(rows: list[list]) -> str:
    """`rows` as a Markdown table (TensorBoard's text plugin renders Markdown)."""
    def cell(value) -> str:
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def log_to_trackers(loggers: list, records: list[dict], teacher: torch.Tensor, student: torch.Tensor, step: int) -> None:
    """The samples as a table and the step's D scores (teacher [B], student [B, N], all prompts) as
    histograms, in the trackers that show them: TensorBoard (Markdown text, histograms), W&B (table,
    histograms), MLflow (a JSON table artifact per step; it has no histograms). `step` is the x-axis
    Lightning's loggers use for the same step's scalars."""
    rows = table_rows(records)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            writer = logger.experiment
            writer.add_text("rollouts/samples", markdown_table(rows), global_step=step)
            writer.add_histogram("rollouts/d_score_teacher", teacher.float().cpu(), global_step=step)
            writer.add_histogram("rollouts/d_score_student", student.float().flatten().cpu(), global_step=step)
        elif isinstance(logger, WandbLogger):
            import wandb

            logger.log_metrics({
                "rollouts/samples": wandb.Table(columns=TABLE_COLUMNS, data=rows),
                "rollouts/d_score_teacher": wandb.Histogram(teacher.float().cpu().numpy()),
                "rollouts/d_score_student": wandb.Histogram(student.float().flatten().cpu().numpy()),
            }, step=step)
        elif isinstance(logger, MLFlowLogger):
            columns = {name: [row[i] for row in rows] for i, name in enumerate(TABLE_COLUMNS)}
            logger.experiment.log_table(logger.run_id, data=columns, artifact_file=f"rollouts/step_{step:06d}.json")


class RolloutSamples(L.Callback):
    """Appends up to `max_prompts` prompts of the step's rollout to `<dirpath>/rollouts.jsonl`.

    One line per prompt: step, phase, prompt id, teacher response and score, and each
    student sample with its score (the reward it was given) and length in tokens. The same
    samples go to the run's trackers (`log_to_trackers`) as a table with D-score histograms.
    """

    def __init__(self, dirpath: str, every_n_steps: int = 10, max_prompts: int = 4):
        self.path = Path(dirpath) / "rollouts.jsonl"
        self.every_n_steps, self.max_prompts = every_n_steps, max_prompts

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = pl_module.completed_steps
        last = getattr(pl_module, "last_rollout", None)
        if last is None or not trainer.is_global_zero or step % self.every_n_steps:
            return
        batch, rollout, scores = last
        decode = pl_module.tokenizer.decode
        n = rollout.num_samples
        records = []
        for i in range(min(self.max_prompts, len(batch["ids"]))):
            prompt = batch["prompt_ids"][i][batch["prompt_mask"][i].bool()]
            teacher = batch["response_ids"][i][batch["response_mask"][i].bool()]
            samples = []
            for j in range(i * n, (i + 1) * n):
                tokens = rollout.response_ids[j][rollout.response_mask[j].bool()]
                samples.append({"text": decode(tokens, skip_special_tokens=True), "score": scores.student[i, j - i * n].item(),
                                "length": len(tokens)})
            records.append({
                "step": step, "phase": phase_name(outputs.get("train/phase", 0.0)),
                "id": batch["ids"][i], "prompt": decode(prompt, skip_special_tokens=False),
                "teacher": decode(teacher, skip_special_tokens=True), "teacher_score": scores.teacher[i].item(),
                "teacher_length": len(teacher), "samples": samples,
            })
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        # Lightning's loggers put method step k at x = k - 1 (their step counts batches from 0).
        log_to_trackers(trainer.loggers, records, scores.teacher, scores.student, step - 1)
