"""ROPD: Rubric-based On-policy Distillation (Fang, Hong, Zheng et al., 2026; arXiv 2605.07396). The teacher is
used through its text only: its responses in the dump are the references; an LLM grader (`method.grader`, any
OpenAI-compatible chat endpoint) turns them into rewards.

One rubric step, in order (as the official trainer, github.com/Peregrine123/ROPD_official, runs each step):
  1. rollout   N responses per prompt from the current student (the method's sampler, as GAD's), drawn once
               per prompt even when the dump has several teachers (gad.teachers.prompt_view)
  2. rubric    per prompt, the Rubricator contrasts ALL its teacher responses with these N rollouts and writes
               4..12 weighted criteria; the Verifier marks each rollout (and each reference) true/false per
               criterion; reward s_i = sum_k w_k v_ik / (sum_k w_k + eps) (gad.ropd_grader, gad.ropd_rubrics)
  3. policy    GRPO: advantages centred within each prompt's N rewards (not divided by their std: the official
               norm_adv_by_std_in_grpo false), PPO-clipped surrogate, token-mean (gad.methods.policy, GAD's)
A prompt the grader failed on gets equal rewards, so zero advantage; the step logs `train/grader_failed`.

Where this departs from the official code, or the paper is silent (each knob's help in gad.config.ropd says so):
  * one optimizer update per rollout batch (GAD's), where verl splits a batch of 32 prompts into mini-batches of
    8 (4 updates, the PPO ratio then moving off 1); the clip range is kept but never binds here;
  * an optional CE warm-up on the teacher responses (`warmup_steps`, 0 by default: the official trainer starts
    the policy steps from an instruct model; the toy world's random student needs it to produce answers);
  * the teacher responses come from the dump (the official default reads an offline teacher index too);
  * the question shown to the grader is the decoded prompt (chat-template role words included, special tokens
    dropped), where the official code renders the raw messages;
  * no quality gate that stops a run when over 40% of the groups fall back (the official reward manager's):
    only `abort_after_failures` failed requests in a row stop it.
"""

from __future__ import annotations

import functools
import math
from enum import Enum
from typing import Any

import torch

from gad.config.ropd import ROPDConfig
from gad.methods.base import DistillModule
from gad.methods.policy import PolicyGradient
from gad.models import frozen_copy
from gad.rollout import Rollout
from gad.ropd_grader import Grader, Group, step_metrics
from gad.teachers import prompt_view


class ROPDPhase(Enum):
    """A step's phase (`label` in tables and the progress line, `code` logged as `train/phase`)."""

    WARMUP = "warmup", 0.0  # CE on the teacher responses (method.warmup_steps; none at paper scale)
    RUBRIC = "rubric", 1.0  # the policy gradient, rewarded by the rubric scores

    def __init__(self, label: str, code: float):
        self.label, self.code = label, code


class ROPDModule(PolicyGradient, DistillModule):
    Config = ROPDConfig

    def __init__(self, config: ROPDConfig, student, tokenizer, lora=None):
        super().__init__(config, student, tokenizer, lora)
        c = config
        if c.warmup_lr is not None and c.warmup_steps:  # the warm-up's CE updates at warmup_lr (as GAD's)
            generator = self.networks["generator"]
            generator.scheduler = functools.partial(
                generator.scheduler, first_updates=c.warmup_steps, first_scale=c.warmup_lr / c.generator_optimizer.lr
            )
        self.temperature, self.num_samples, self.max_new_tokens = c.temperature, c.num_samples, c.max_new_tokens
        self.warmup_steps, self.rubric_steps = c.warmup_steps, c.rubric_steps
        self.kl_coef, self.clip_ratio, self.scale_advantages = c.kl_coef, c.clip_ratio, c.scale_advantages
        self.share_prompt = c.share_prompt
        self.rollout_batch_size, self.rollout_segment_tokens = c.rollout_batch_size, c.rollout_segment_tokens
        self.use_configured_sampler(max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p)
        # Built now (filled at the first rubric step) so a checkpoint always has the same keys; none without KL.
        self.reference: torch.nn.Module | None = frozen_copy(self.generator) if c.kl_coef > 0 else None
        self.reference_ready = False
        # Made when fitting starts (`setup`), never by reloading a run (gad.runs.load_module): no server, no key.
        self.grader: Grader | None = None
        self.toy_grader = None

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.rubric_steps

    def schedule(self) -> tuple[ROPDPhase, bool, bool]:
        phase = ROPDPhase.WARMUP if self.completed_steps < self.warmup_steps else ROPDPhase.RUBRIC
        return phase, False, True

    # ------------------------------------------------------------ the grader's lifetime: fit only

    def setup(self, stage: str) -> None:
        if stage != "fit" or self.grader is not None:
            return
        c, base_url = self.config.grader, None
        if c.toy_server:
            from gad.toy.grader import ToyGrader

            self.toy_grader = ToyGrader().start()
            base_url = self.toy_grader.base_url
        # the key is read now: a missing one stops the run before the first step
        self.grader = Grader(c, self.config.grader_cache, rank=self.global_rank, base_url=base_url)

    def teardown(self, stage: str) -> None:
        super().teardown(stage)
        if self.grader is not None:
            self.grader.close()
            self.grader = None
        if self.toy_grader is not None:
            self.toy_grader.stop()
            self.toy_grader = None

    # ------------------------------------------------------------ the step

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, float]:
        phase = self.schedule()[0]
        teacher_len = batch["response_mask"].sum(-1).float().mean()
        if phase is ROPDPhase.WARMUP:
            metrics = {"train/phase": phase.code, **self.sft_step(batch), "train/teacher_len": teacher_len}
            return self.end_step(metrics, batch, phase)
        self.freeze_reference()
        prompts = prompt_view(batch)
        rollout = self.rollout(prompts)
        rewards, reward_metrics = self.rubric_rewards(batch, prompts, rollout)
        metrics = {
            "train/phase": phase.code,
            **reward_metrics,
            "train/response_len": rollout.lengths.float().mean(),
            "train/generated_tokens": rollout.lengths.sum(),  # this step's sampled tokens (the evidence's cost)
            "train/teacher_len": teacher_len,
            **self.policy_step(batch, rollout, rewards),
        }
        return self.end_step(metrics, batch, phase, rollout)

    def rubric_rewards(
        self, batch: dict[str, Any], prompts: dict[str, Any], rollout: Rollout
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The rollouts' rubric scores [B, N] (a failed prompt: all 0, so zero advantage) and what to log."""
        n, decode = self.num_samples, self.tokenizer.batch_decode
        questions = decode(prompts["prompt_ids"], skip_special_tokens=True)
        responses = decode(
            rollout.response_ids.masked_fill(~rollout.response_mask.bool(), self.tokenizer.pad_token_id),
            skip_special_tokens=True,
        )
        teacher_rows = decode(
            batch["response_ids"].masked_fill(~batch["response_mask"].bool(), self.tokenizer.pad_token_id),
            skip_special_tokens=True,
        )
        which = batch["response_prompt"].tolist()
        rows_of = [[r for r, p in enumerate(which) if p == b] for b in range(len(questions))]
        groups = [
            Group(prompts["ids"][b], questions[b], [teacher_rows[r] for r in rows], responses[b * n : (b + 1) * n])
            for b, rows in enumerate(rows_of)
        ]
        with self.timed("grade"):
            grading = self.grader.grade(groups)
        rewards = torch.zeros(len(groups), n, device=self.device)
        for b, result in enumerate(grading.results):
            if result.rewards is not None:
                rewards[b] = torch.tensor(result.rewards, device=self.device)
        graded = [b for b, r in enumerate(grading.results) if r.rewards is not None]
        scored = rewards[graded]
        metrics: dict[str, Any] = {
            **step_metrics(grading),
            "train/reward_mean": scored.mean() if graded else math.nan,
            "train/reward_std": scored.std() if scored.numel() > 1 else math.nan,
        }
        teachers = batch.get("teachers")
        if teachers and len(set(teachers)) > 1:  # several teachers: the mean rubric score of each one's responses
            per: dict[str, list[float]] = {}
            for rows, result in zip(rows_of, grading.results):
                for r, score in zip(rows, result.reference_rewards):
                    per.setdefault(teachers[r], []).append(score)
            metrics.update({f"train/teacher_reward/{t}": sum(v) / len(v) for t, v in per.items()})
        return rewards, metrics
