"""Blended knowledge distillation (gad-method.md section 3; docs/kd.md).

    L = alpha * CE(teacher response) + (1 - alpha) * T^2 * KL(teacher_T || student_T)

One training step, in order:
  1. sequences   on-policy: sample from the current student (no grad);
                 off-policy ("standard KD"): the teacher's responses from the dump
  2. teacher     the teacher scores those sequences: full distributions or top-k + remainder
  3. loss        per token, the softened KL (gad.kd_losses) token-averaged over the response
                 tokens, x (1 - alpha) T^2; plus alpha x token-mean CE on the teacher responses
                 (off-policy both come from one forward, since the sequences are the same)
  4. G step      one AdamW step; alpha itself ramps from 0 to its target over alpha_warmup_steps

The teacher is built when fitting starts (`setup`), not in `__init__`, so that reloading a
run (gad.runs.load_module) needs neither the teacher model nor its server. It is not a
submodule: it is never trained, checkpointed or moved by Lightning.
"""

from __future__ import annotations

from typing import Any

import torch

from gad import kd_losses
from gad.config.method import KDConfig
from gad.config.model import LoraConfig
from gad.kd_teachers import Teacher, TeacherDists, build_teacher
from gad.losses import masked_sum, rollout_logprob_gap
from gad.methods.base import DistillModule


def at_tokens(dists: TeacherDists, real: torch.Tensor) -> TeacherDists:
    """The teacher's distributions at the `real` [B, R] positions only, flat ([real.sum(), ...]),
    in the order of `response_logprobs`' logits."""
    return TeacherDists(
        *(None if t is None else t[real.to(t.device)] for t in (dists.logprobs, dists.ids, dists.valid))
    )


class KDModule(DistillModule):
    Config = KDConfig

    def __init__(self, config: KDConfig, student, tokenizer, lora: LoraConfig | None = None):
        super().__init__(config, student, tokenizer, lora)  # model.lora.generator only: KD has no discriminator
        c = config
        self.steps, self.alpha, self.alpha_warmup_steps = c.steps, c.alpha, c.alpha_warmup_steps
        self.softening_temperature, self.on_policy = c.softening_temperature, c.on_policy
        self.num_samples, self.rollout_batch_size = c.samples_per_prompt, c.rollout_batch_size
        self.rollout_segment_tokens = c.rollout_segment_tokens
        self.use_configured_sampler(max_new_tokens=c.max_new_tokens, temperature=c.rollout_temperature, top_p=c.top_p)
        # alpha = 1 from the first step is plain SeqKD: the teacher is never asked anything.
        self.needs_teacher = c.alpha < 1 or c.alpha_warmup_steps > 0
        self.teacher: Teacher | None = build_teacher(c.teacher) if self.needs_teacher else None
        self.teacher_ready = False

    @property
    def total_steps(self) -> int:
        return self.steps

    def current_alpha(self) -> float:
        return kd_losses.alpha_at(self.completed_steps, self.alpha, self.alpha_warmup_steps)

    # ------------------------------------------------------------ the teacher

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.setup_teacher()

    def setup_teacher(self) -> None:
        if self.teacher is not None and not self.teacher_ready:
            self.teacher.setup(self.tokenizer)  # refuses another tokenizer with one line
            self.teacher_ready = True

    def token_kl(self, dists: TeacherDists, student_logits: torch.Tensor) -> torch.Tensor:
        """Per-token softened KL(teacher_T || student_T): [...] for dists and logits [..., V]."""
        dists = dists.to(student_logits.device)
        if dists.full:
            return kd_losses.full_kl(dists.logprobs, student_logits, self.softening_temperature)
        return kd_losses.topk_kl(dists.ids, dists.logprobs, student_logits, self.softening_temperature, dists.valid)

    # ------------------------------------------------------------ the step

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, float]:
        self.setup_teacher()
        with self.timed("g_step"):
            metrics = self.kd_backward(batch, self.current_alpha())
            metrics["train/grad_norm_g"] = self.step_optimizer("generator")
        return self.end_step(metrics, batch)

    def kd_backward(self, batch: dict[str, Any], alpha: float) -> dict[str, torch.Tensor]:
        """Backpropagate alpha x CE + (1 - alpha) x T^2 x KL for one batch; returns the step's metrics."""
        metrics: dict[str, Any] = {
            "train/alpha": alpha,
            "train/teacher_len": batch["response_mask"].sum(-1).float().mean(),
        }
        kl_weight = (1.0 - alpha) * self.softening_temperature**2
        if kl_weight == 0:  # alpha = 1: exactly SeqKD
            ce = self.sft_backward(batch, weight=1.0)
            metrics.update({"train/sft_loss": ce, "train/loss": ce})
            return metrics

        if self.on_policy:
            rollout = self.rollout(batch)
            prompts, prompt_mask = rollout.prompt_ids, rollout.prompt_mask
            targets, mask = rollout.response_ids, rollout.response_mask
            metrics["train/response_len"] = rollout.lengths.float().mean()
            # this step's sampled tokens (the evidence table's cost column)
            metrics["train/generated_tokens"] = rollout.lengths.sum()
            # a sampler that gives its log-probs (method.rollout.engine=vllm): the gap to this step's forward
            sampler_logp = rollout.sampler_logprobs
        else:
            prompts, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
            targets, mask = batch["response_ids"], batch["response_mask"]
            metrics["train/response_len"] = metrics["train/teacher_len"]
            sampler_logp = None
        ids, attn = torch.cat([prompts, targets], dim=1), torch.cat([prompt_mask, mask], dim=1)
        shared_ce = not self.on_policy  # off-policy, CE and KL are over the same tokens: one forward
        total = mask.sum().clamp(min=1)
        sums = {k: torch.zeros((), device=self.device) for k in ("kl", "ce", "mass")}
        if sampler_logp is not None:
            sums["gap"] = torch.zeros((), device=self.device)
        chunks = list(self.row_chunks(prompt_mask, mask))
        sft_follows = not shared_ce and alpha > 0  # its last backward all-reduces these gradients too
        for i, sl in enumerate(chunks):
            with self.timed("teacher"):
                dists = self.teacher.score(ids[sl], attn[sl], targets.size(1))
            dists = at_tokens(dists, mask[sl].bool())
            # Through the DDP wrapper (self.network), or the ranks' gradients are never all-reduced.
            with self.network("generator", sync=i == len(chunks) - 1 and not sft_follows) as generator:
                logp, logits = self.response_logprobs(
                    generator, prompts[sl], prompt_mask[sl], targets[sl], mask[sl], with_logits=True
                )
                kl = self.token_kl(dists, logits).sum()  # at the real response tokens (logits are flat)
                if sampler_logp is not None:  # at the sampling temperature
                    sums["gap"] += rollout_logprob_gap(
                        logits.detach(), targets[sl], mask[sl], sampler_logp[sl], self.sampling.temperature
                    )
                loss = kl_weight * kl / total
                if shared_ce:
                    ce = -masked_sum(logp, mask[sl])
                    loss = loss + alpha * ce / total
                    sums["ce"] += ce.detach()
                self.manual_backward(loss)
            sums["kl"] += kl.detach()
            if not dists.full:
                sums["mass"] += kd_losses.listed_mass(dists.logprobs, dists.valid).to(mask.device).sum()
        metrics["train/kl"] = sums["kl"] / total
        if sampler_logp is not None:
            metrics["train/rollout_logprob_gap"] = sums["gap"] / total
        if not dists.full:
            metrics["train/teacher_topk_mass"] = sums["mass"] / total
        if shared_ce:
            metrics["train/sft_loss"] = sums["ce"] / total
        elif alpha > 0:
            metrics["train/sft_loss"] = self.sft_backward(batch, weight=alpha)
        ce = metrics.get("train/sft_loss", torch.zeros((), device=self.device))
        metrics["train/loss"] = kd_losses.blended_loss(ce, metrics["train/kl"], alpha, self.softening_temperature)
        return metrics
