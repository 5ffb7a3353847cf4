"""The policy-gradient step that the on-policy methods share (GAD, ROPD): GRPO-style group advantages, the
PPO-clipped surrogate on the rollout, k3 KL to a frozen reference, and the forwards behind them.

A mixin for a `gad.methods.base.DistillModule` (listed first: `class GADModule(PolicyGradient, DistillModule)`).
The host sets, in its `__init__`: `temperature`, `num_samples`, `clip_ratio`, `kl_coef`, `alpha` (weight of the
teacher CE added to the policy loss), `share_prompt`, `reference` (a `gad.models.frozen_copy` of the generator,
or None when `kl_coef` is 0) and `reference_ready` (False until `freeze_reference` fills it).
"""

from __future__ import annotations

from typing import Any

import torch

from gad import losses
from gad.methods.base import micro_batches
from gad.prompt_sharing import can_share_prompt
from gad.rollout import Rollout


class PolicyGradient:
    """See the module doc."""

    scale_advantages = True  # GRPO's advantages divide by the group's std (GAD); ROPD's official config does not
    alpha = 0.0
    # `reference` and `reference_ready` are set by the host's __init__; never class attributes here: a class
    # attribute would shadow the submodule that torch's Module keeps in `_modules`.

    def freeze_reference(self) -> None:
        """Snapshot the current student as the frozen KL reference (once: the first policy step)."""
        if self.reference is not None and not self.reference_ready:
            self.reference.load_state_dict(self.generator.state_dict())
        self.reference_ready = True

    def policy_step(self, batch: dict[str, Any], rollout: Rollout, rewards: torch.Tensor) -> dict[str, torch.Tensor]:
        """PPO-clipped policy gradient on the rollout for `rewards` [B, N] (GAD: D's scores; ROPD: the rubric
        scores), with group advantages (`scale_advantages`: divided by the group's std too), plus k3 KL to the
        reference and alpha x CE on the teacher responses."""
        advantages = losses.group_advantages(rewards, scale=self.scale_advantages).reshape(-1, 1)
        mask = rollout.response_mask
        ref_logp = self.reference_logprobs(rollout) if self.reference is not None else None
        total = mask.sum().clamp(min=1)
        sums = {k: torch.zeros((), device=self.device) for k in ("pg", "kl", "clip", "entropy")}
        sampler_logp = rollout.sampler_logprobs  # the sampler's own log-probs (method.rollout.engine=vllm), if any
        if sampler_logp is not None:
            sums["rollout_logprob_gap"] = torch.zeros((), device=self.device)
        with self.timed("g_step"):
            grouped = self.shares_prompt(self.generator)
            chunks = self.sample_chunks(rollout, grouped)
            for i, sl in enumerate(chunks):
                # The last backward of the step all-reduces G's gradients (the CE term's, if any).
                with self.network("generator", sync=i == len(chunks) - 1 and self.alpha == 0) as generator:
                    logp, logits = self.rollout_logprobs(generator, rollout, sl, grouped, with_logits=True)
                    # One update per rollout batch: the "old" policy is the current one, detached.
                    pg, clipped = losses.ppo_clip_loss(logp, logp.detach(), advantages[sl], self.clip_ratio)
                    if sampler_logp is not None:  # the mismatch, and truncated IS with method.rollout.tis_cap
                        weight, gap = losses.rollout_correction(
                            logp.detach(), sampler_logp[sl], mask[sl], self.config.rollout.tis_cap
                        )
                        pg = pg * weight
                        sums["rollout_logprob_gap"] += gap
                    per_token = pg
                    if ref_logp is not None:
                        kl = losses.k3_kl(logp, ref_logp[sl])
                        per_token = pg + self.kl_coef * kl
                        sums["kl"] += losses.masked_sum(kl.detach(), mask[sl])
                    self.manual_backward(losses.masked_sum(per_token, mask[sl]) / total)
                sums["pg"] += losses.masked_sum(pg.detach(), mask[sl])
                sums["clip"] += losses.masked_sum(clipped, mask[sl])
                with torch.no_grad():
                    sums["entropy"] += losses.token_entropy(logits, self.temperature).sum()  # logits at real tokens
            metrics = {f"train/{k if k != 'pg' else 'g_loss'}": v / total for k, v in sums.items()}
            if self.alpha > 0:
                metrics["train/sft_loss"] = self.sft_backward(batch, weight=self.alpha)
            metrics["train/grad_norm_g"] = self.step_optimizer("generator")
        return metrics

    @torch.no_grad()
    def reference_logprobs(self, rollout: Rollout) -> torch.Tensor:
        with self.timed("ref_forward"):
            grouped = self.shares_prompt(self.reference)
            chunks = self.sample_chunks(rollout, grouped)
            parts = [self.rollout_logprobs(self.reference, rollout, sl, grouped) for sl in chunks]
            logp = parts[0].new_zeros(rollout.response_mask.shape)
            for sl, part in zip(chunks, parts):
                logp[sl] = part
            return logp

    def shares_prompt(self, model: torch.nn.Module) -> bool:
        """Whether `model`'s forwards on the rollout run each prompt once per group: asked for
        (`method.share_prompt`), possible for `model` now, a group fits in a micro-batch, and the
        forwards are not packed (a packed row holds each sequence whole)."""
        return (
            self.share_prompt
            and not self.packed
            and self.micro_batch_size >= self.num_samples
            and can_share_prompt(model)
        )

    def sample_chunks(self, rollout: Rollout, grouped: bool) -> list[slice | torch.Tensor]:
        """Micro-batches of rollout rows; whole prompt groups when `grouped`."""
        if not grouped:
            return self.row_chunks(rollout.prompt_mask, rollout.response_mask)
        n = self.num_samples
        groups = micro_batches(rollout.response_ids.size(0) // n, self.micro_batch_size // n)
        return [slice(g.start * n, g.stop * n) for g in groups]

    def rollout_logprobs(self, model, rollout: Rollout, rows: slice, grouped: bool, with_logits: bool = False):
        """`model`'s log-probs of the sampled tokens [rows, R], at the sampling temperature."""
        return self.response_logprobs(
            model,
            rollout.prompt_ids[rows],
            rollout.prompt_mask[rows],
            rollout.response_ids[rows],
            rollout.response_mask[rows],
            self.temperature,
            with_logits=with_logits,
            group_size=self.num_samples if grouped else 1,
        )

    def frozen_networks(self) -> list[torch.nn.Module]:
        return [self.reference] if self.reference is not None else []

    # ------------------------------------------------------------ checkpoint state

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "reference_ready": self.reference_ready}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.reference_ready = bool(state.get("reference_ready", False))
