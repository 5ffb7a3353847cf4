"""Experiment trackers beside the CSV log (conf/logger/): Lightning's own loggers, built so they run
offline and quietly, and what the rollout samples look like in each of them.

`wandb_logger` and `mlflow_logger` are `_target_`s for conf/logger/{wandb,mlflow}.yaml; their
packages are the `trackers` extra (`pip install -e ".[trackers]"`), imported only when chosen.
"""

from __future__ import annotations

import os

import torch
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

TABLE_COLUMNS = ["step", "phase", "id", "prompt", "response", "role", "D score", "length"]


def wandb_logger(*, offline: bool = True, silent: bool = True, **kwargs) -> WandbLogger:
    """Lightning's WandbLogger. `offline`: no account or network (`wandb sync <run>/wandb/offline-run-*`
    uploads later). `silent`: wandb prints nothing to the terminal (its messages go to
    `<run>/wandb/debug.log`), including its warning about an argument Lightning passes."""
    import wandb

    # Process-wide settings, so they hold from the first line wandb prints in wandb.init. console="off":
    # wandb leaves stdout alone (it would wrap it to copy the output, under the progress bar).
    wandb.setup(settings=wandb.Settings(silent=silent, console="off", mode="offline" if offline else "online"))
    return WandbLogger(offline=offline, **kwargs)


def mlflow_logger(*, tracking_uri: str, experiment_name: str = "gad", **kwargs) -> MLFlowLogger:
    """Lightning's MLFlowLogger. A `file:` tracking URI is a local folder, no server: MLflow 3 keeps
    that store in maintenance mode and refuses it unless MLFLOW_ALLOW_FILE_STORE is set, set here.
    The experiment is created here when new (Lightning would announce that as a warning)."""
    if tracking_uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    if rank_zero_only.rank == 0:  # the process that logs; the others never touch the store
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
        if client.get_experiment_by_name(experiment_name) is None:
            client.create_experiment(experiment_name, artifact_location=kwargs.get("artifact_location"))
    return MLFlowLogger(tracking_uri=tracking_uri, experiment_name=experiment_name, **kwargs)


def table_rows(records: list[dict]) -> list[list]:
    """Rollout records (`RolloutSamples`) -> rows of `TABLE_COLUMNS`: per prompt, the teacher's response,
    then each sample."""
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


def log_rollouts(loggers: list, records: list[dict], teacher: torch.Tensor, student: torch.Tensor, step: int) -> None:
    """The samples as a table and the step's D scores (teacher [B], student [B, N], all prompts) as
    histograms, in the trackers that show them: TensorBoard (Markdown text, histograms), W&B (a table,
    histograms), MLflow (a JSON table artifact per step; it has no histograms). The CSV log has
    neither (`<run>/rollouts.jsonl` holds the samples). `step`: the x-axis of the step's scalars."""
    rows = table_rows(records)
    teacher, student = teacher.detach().float().cpu(), student.detach().float().flatten().cpu()
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            writer = logger.experiment
            writer.add_text("rollouts/samples", markdown_table(rows), global_step=step)
            writer.add_histogram("rollouts/d_score_teacher", teacher, global_step=step)
            writer.add_histogram("rollouts/d_score_student", student, global_step=step)
        elif isinstance(logger, WandbLogger):
            import wandb

            logger.log_metrics(
                {
                    "rollouts/samples": wandb.Table(columns=TABLE_COLUMNS, data=rows),
                    "rollouts/d_score_teacher": wandb.Histogram(teacher.numpy()),
                    "rollouts/d_score_student": wandb.Histogram(student.numpy()),
                },
                step=step,
            )
        elif isinstance(logger, MLFlowLogger):
            columns = {name: [row[i] for row in rows] for i, name in enumerate(TABLE_COLUMNS)}
            logger.experiment.log_table(logger.run_id, data=columns, artifact_file=f"rollouts/step_{step:06d}.json")
