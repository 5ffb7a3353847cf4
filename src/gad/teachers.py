"""Several teachers: how their responses pair with the student's samples, and per-teacher scores.

A batch of a several-teacher dump (`gad.data.datamodule`) has one row per (prompt, teacher response):
R rows for B prompts, `batch["teachers"]` [R] names each row's teacher, `batch["response_prompt"]` [R]
says which prompt a row answers and `batch["prompt_rows"]` [B] is each prompt's first row.

Pairs for GAD's discriminator (the choice, for both ways a method may roll out):
  * every teacher response is a positive; it is paired with the student samples of ITS prompt, so the
    Bradley-Terry loss averages -log sigmoid(D(x, y_t^k) - D(x, y_s^i)) over all (k, i) of each prompt;
    no teacher is preferred to another and D learns what the teachers share against the student.
  * per-row rollout (what GAD does with the row layout as it is): the N samples are drawn for each row,
    so a prompt with K teachers gets K groups of N samples, each group paired with one teacher response
    (K x N pairs from K x N samples; GRPO groups per row). Costs K times the rollouts of one teacher.
  * shared rollout (`shared_pairs`): the N samples are drawn once per prompt (`prompt_view`), each
    sample paired with every teacher response of its prompt (K x N pairs from N samples); a sample's
    reward D(x, y_s^i) does not depend on the teachers, so the generator step is one teacher's.
Either way `per_teacher_means(teacher_scores, batch["teachers"])` gives the mean D score of each
teacher's responses, logged as `train/d_score/<teacher>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def per_teacher_means(scores: torch.Tensor, teachers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Mean of `scores` [R] (or [R, ...]: all entries of a row) per teacher, teachers [R] naming each row's.

    Returns {teacher: 0-dim tensor}, teachers in order of first appearance; empty for no rows.
    """
    if scores.size(0) != len(teachers):
        raise ValueError(f"per_teacher_means: {scores.size(0)} score rows but {len(teachers)} teacher names")
    rows: dict[str, list[int]] = {}
    for i, name in enumerate(teachers):
        rows.setdefault(name, []).append(i)
    flat = scores.detach().reshape(scores.size(0), -1)
    return {name: flat[torch.tensor(idx, device=scores.device)].mean() for name, idx in rows.items()}


def shared_pairs(student_scores: torch.Tensor, response_prompt: torch.Tensor) -> torch.Tensor:
    """Student scores [B, N] (N samples of each of B prompts) lined up with the R teacher rows: [R, N],
    row r = the samples of the prompt that teacher row r answers, so `losses.bradley_terry_loss(teacher
    [R], shared_pairs(student, response_prompt))` averages over every (teacher response, sample) pair of
    each prompt. With one teacher (response_prompt = arange(B)) it is `student_scores` itself."""
    return student_scores.index_select(0, response_prompt.to(student_scores.device))


def prompt_view(batch: dict[str, Any]) -> dict[str, Any]:
    """The B distinct prompts of a batch (for a rollout of N samples per prompt, not per teacher row):
    ids [B], prompt_ids/prompt_mask [B, P]."""
    rows = batch["prompt_rows"]
    return {
        "ids": [batch["ids"][i] for i in rows.tolist()],
        "prompt_ids": batch["prompt_ids"].index_select(0, rows.to(batch["prompt_ids"].device)),
        "prompt_mask": batch["prompt_mask"].index_select(0, rows.to(batch["prompt_mask"].device)),
    }
