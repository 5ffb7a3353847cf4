"""Generative Adversarial Distillation (Ye, Dong et al., 2025; arXiv 2511.10643).

One training step, in order:
  1. rollout       sample N responses per prompt from the current student (no grad)
  2. discriminate  D scores teacher and student responses; those student scores are the rewards
  3. D step        Bradley-Terry (or BCE) update: prefer the teacher's response to each sample
  4. G step        warm-up: cross-entropy on the teacher responses (SeqKD)
                   adversarial: PPO-clipped policy gradient with group-normalised advantages,
                   k3 KL to the reference (the student at the end of warm-up), + alpha x CE
  5. log          the metrics, and the step's StepRecord for the callbacks (end_step)
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from gad import losses, rewards
from gad.config.method import GADConfig
from gad.config.model import LoraConfig
from gad.discriminator import Discriminator
from gad.methods.base import DistillModule, micro_batches, packed_micro_batches
from gad.methods.optim import NetworkOptim, partial_of
from gad.methods.policy import PolicyGradient
from gad.models import apply_lora, frozen_copy
from gad.rollout import Rollout
from gad.step_record import Phase, Scores
from gad.teachers import per_teacher_means


def teacher_then_samples(
    batch: dict[str, Any], rollout: Rollout, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """D's rows: per prompt, its teacher response, then its N samples ([B * (N + 1), ...] each).

    Returns prompt ids and mask (each prompt repeated N + 1 times), responses right-padded to
    a common width with `pad_id`, and their masks.
    """
    n = rollout.num_samples
    width = max(batch["response_ids"].size(1), rollout.response_ids.size(1))

    def grouped(teacher: torch.Tensor, student: torch.Tensor, fill: int) -> torch.Tensor:
        teacher = F.pad(teacher, (0, width - teacher.size(1)), value=fill)
        student = F.pad(student, (0, width - student.size(1)), value=fill)
        return torch.cat([teacher.unsqueeze(1), student.view(-1, n, width)], dim=1).flatten(0, 1)

    prompt_ids = batch["prompt_ids"].repeat_interleave(n + 1, dim=0)
    prompt_mask = batch["prompt_mask"].repeat_interleave(n + 1, dim=0)
    responses = grouped(batch["response_ids"], rollout.response_ids, pad_id)
    response_mask = grouped(batch["response_mask"], rollout.response_mask, 0)
    return prompt_ids, prompt_mask, responses, response_mask


class GADModule(PolicyGradient, DistillModule):
    Config = GADConfig

    def __init__(self, config: GADConfig, student, tokenizer, lora: LoraConfig | None = None):
        # D's trunk is a copy of the plain student's, taken before LoRA (model.lora.generator)
        # wraps the student in place for the generator.
        discriminator = Discriminator.from_student(student)
        super().__init__(config, student, tokenizer, lora)
        c = config
        if c.warmup_lr is not None:  # G's warm-up updates run at warmup_lr, the adversarial ones at the optimizer's lr
            warmup_updates = max(0, c.warmup_steps - c.d_only_steps) if c.generator_warmup else 0
            generator = self.networks["generator"]
            generator.scheduler = functools.partial(
                generator.scheduler,
                first_updates=warmup_updates,
                first_scale=c.warmup_lr / c.generator_optimizer.lr,
            )
        self.temperature, self.num_samples, self.max_new_tokens = c.temperature, c.num_samples, c.max_new_tokens
        self.warmup_steps, self.d_only_steps, self.adversarial_steps = (
            c.warmup_steps,
            c.d_only_steps,
            c.adversarial_steps,
        )
        self.alpha, self.kl_coef, self.clip_ratio = c.alpha, c.kl_coef, c.clip_ratio
        self.d_loss = losses.DISCRIMINATOR_LOSSES[c.d_loss]
        self.generator_warmup, self.discriminator_warmup = c.generator_warmup, c.discriminator_warmup
        self.off_policy, self.off_policy_d_steps = c.off_policy, c.off_policy_d_steps if c.off_policy else 0
        self.rollout_batch_size, self.rollout_segment_tokens = c.rollout_batch_size, c.rollout_segment_tokens
        self.share_prompt = c.share_prompt
        self.use_configured_sampler(max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p)
        # model.lora.discriminator: the trunk trains adapters only; the scalar head is trained in full.
        discriminator.trunk = apply_lora(discriminator.trunk, self.lora, "discriminator")
        self.discriminator = discriminator
        self.networks["discriminator"] = NetworkOptim(
            self.discriminator,
            partial_of(c.discriminator_optimizer),
            partial_of(c.discriminator_scheduler),
            c.discriminator_grad_clip,
        )
        # Built now (weights copied in when warm-up ends) so a checkpoint always has the same keys.
        # A copy of the generator as built (with LoRA: frozen base + adapters), so its state dict
        # loads into the reference as is and gives the warmed-up policy.
        self.reference: torch.nn.Module | None = frozen_copy(self.generator) if c.kl_coef > 0 else None
        self.reference_ready = False  # holds the warmed-up policy yet (the checkpoint callback saves it once then)
        # method.rewards: imported when fitting starts (`setup`), never by reloading a run (gad.runs.load_module)
        self.discriminator_weight, self.reward_terms = c.discriminator_weight, []

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.off_policy_d_steps + self.adversarial_steps

    def schedule(self) -> tuple[Phase, bool, bool]:
        """(phase, train D?, train G?) for the current step.

        Warm-up, then adversarial; with the off-policy ablation, between them a stretch where D
        trains alone on the frozen warmed-up student (after which D is frozen and G trains).
        """
        step = self.completed_steps
        if step < self.warmup_steps:
            return Phase.WARMUP, self.discriminator_warmup, self.generator_warmup and step >= self.d_only_steps
        if step < self.warmup_steps + self.off_policy_d_steps:
            return Phase.D_ON_FROZEN_G, True, False
        return Phase.ADVERSARIAL, not self.off_policy, True

    def phase_name(self) -> str:
        phase, train_d, train_g = self.schedule()
        if phase is Phase.ADVERSARIAL:
            return "adversarial"
        if phase is Phase.D_ON_FROZEN_G:
            return "D on frozen G"
        return {(True, False): "warm-up, D only", (False, True): "warm-up, G only"}.get((train_d, train_g), "warm-up")

    # ------------------------------------------------------------ the step

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, float]:
        phase, train_d, train_g = self.schedule()
        if phase is not Phase.WARMUP:
            self.start_adversarial_phase()

        rollout = self.rollout(batch)
        scores, d_metrics = self.discriminator_step(batch, rollout, update=train_d)
        if not train_g:
            g_metrics = {}
        elif phase is Phase.ADVERSARIAL:
            rewards, reward_metrics = self.reward(batch, rollout, scores)
            g_metrics = {**reward_metrics, **self.policy_step(batch, rollout, rewards)}
        else:
            g_metrics = self.sft_step(batch)

        metrics = {"train/phase": phase.code, **self.rollout_metrics(batch, rollout, scores), **d_metrics, **g_metrics}
        return self.end_step(metrics, batch, phase, rollout, scores)

    def start_adversarial_phase(self) -> None:
        """Snapshot the warmed-up student as the frozen KL reference (once)."""
        self.freeze_reference()

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.config.rewards and not self.reward_terms:
            self.reward_terms = rewards.build_terms(self.config.rewards)

    def reward(self, batch: dict[str, Any], rollout: Rollout, scores: Scores) -> tuple[torch.Tensor, dict]:
        """The policy's reward [B, N]: method.discriminator_weight x D's scores of the samples, plus each term of
        method.rewards x its weight (gad.rewards), summed before the group normalisation."""
        if not self.reward_terms and self.discriminator_weight == 1:
            return scores.student, {}  # the paper's reward, as is
        total = self.discriminator_weight * scores.student
        metrics = {"train/reward/discriminator": scores.student.mean()}
        if self.reward_terms:
            n, mask = rollout.num_samples, rollout.response_mask.bool()
            prompts = [
                p for p in self.tokenizer.batch_decode(batch["prompt_ids"], skip_special_tokens=True) for _ in range(n)
            ]
            responses = self.tokenizer.batch_decode(
                rollout.response_ids.masked_fill(~mask, self.tokenizer.pad_token_id), skip_special_tokens=True
            )
            metas = [m for m in batch.get("metas") or [{}] * len(batch["ids"]) for _ in range(n)]
            for term in self.reward_terms:
                values = rewards.evaluate(term, prompts, responses, metas, total.device).view_as(total)
                total = total + term.weight * values
                metrics[f"train/reward/{term.name}"] = values.mean()
        metrics.update({"train/reward_mean": total.mean(), "train/reward_std": total.std()})
        return total, metrics

    # ------------------------------------------------------------ 2-3. discriminator

    def discriminator_step(self, batch: dict[str, Any], rollout: Rollout, update: bool) -> tuple[Scores, dict]:
        """Score teacher and student responses, and (if `update`) take one D step on them.

        The returned scores come from this forward, before the update: they are the
        rewards, so D is never run twice on the same sequences.
        """
        n = self.num_samples
        prompts, prompt_mask, responses, response_mask = teacher_then_samples(
            batch, rollout, self.tokenizer.pad_token_id
        )
        group = n + 1 if self.share_prompt else 1
        num_prompts = batch["prompt_ids"].size(0)
        teacher_scores, student_scores, loss_total = [], [], torch.zeros((), device=self.device)
        with self.timed("d_step"), torch.set_grad_enabled(update):
            # Micro-batches hold whole prompt groups so each BT pair sits in one forward.
            if self.packed:
                lengths = prompt_mask.sum(1) + response_mask.sum(1)
                chunks = packed_micro_batches(lengths, self.max_tokens_per_micro_batch, group=n + 1)
                forward_kwargs = {"packed": True}
            else:
                chunks = [
                    slice(p.start * (n + 1), p.stop * (n + 1))
                    for p in micro_batches(num_prompts, max(1, self.micro_batch_size // (n + 1)))
                ]
                forward_kwargs = {"group_size": group}
            for i, rows in enumerate(chunks):
                width = int(response_mask[rows].sum(1).max()) if self.packed else responses.size(1)
                with self.network("discriminator", sync=i == len(chunks) - 1) as discriminator:
                    discriminator = discriminator if update else self.discriminator
                    score = discriminator(
                        prompts[rows],
                        prompt_mask[rows],
                        responses[rows, :width],
                        response_mask[rows, :width],
                        **forward_kwargs,
                    ).view(-1, n + 1)
                    t_score, s_score = score[:, 0], score[:, 1:]
                    loss = self.d_loss(t_score, s_score) * score.size(0) / num_prompts
                    if update:
                        self.manual_backward(loss)
                loss_total += loss.detach()
                teacher_scores.append(t_score.detach())
                student_scores.append(s_score.detach())
            scores = Scores(torch.cat(teacher_scores), torch.cat(student_scores))
            if self.packed:  # packed micro-batches may take the prompts out of order: back to the batch's
                order = torch.cat([rows[:: n + 1] // (n + 1) for rows in chunks]).argsort()
                scores = Scores(scores.teacher[order], scores.student[order])
            metrics = {
                "train/d_loss": loss_total,
                "train/d_acc": losses.discriminator_accuracy(scores.teacher, scores.student),
            }
            teachers = batch.get("teachers")
            if teachers and len(set(teachers)) > 1:  # several teachers: D's mean score of each one's responses
                for name, value in per_teacher_means(scores.teacher, teachers).items():
                    metrics[f"train/d_score/{name}"] = value
            if update:
                metrics["train/grad_norm_d"] = self.step_optimizer("discriminator")
        return scores, metrics

    # ------------------------------------------------------------ 5. what to watch

    def rollout_metrics(self, batch: dict[str, Any], rollout: Rollout, scores: Scores) -> dict[str, Any]:
        rewards = scores.student
        return {
            "train/teacher_score": scores.teacher.mean(),
            "train/student_score": rewards.mean(),
            "train/score_gap": scores.teacher.mean() - rewards.mean(),
            "train/reward_mean": rewards.mean(),
            "train/reward_std": rewards.std(),
            "train/response_len": rollout.lengths.float().mean(),
            "train/generated_tokens": rollout.lengths.sum(),  # this step's sampled tokens (the evidence's cost)
            "train/teacher_len": batch["response_mask"].sum(-1).float().mean(),
        }
