"""SODA's preference loss (Semi On-policy Distillation with Alignment; Chen, Wang, Zhu et al., arXiv 2604.03873).

What the paper says (its abstract and published summaries; its method section was not available to this
project when this was written): each teacher response is paired with a ONE-TIME, static snapshot of the
base student's own response to the same prompt (generated once, before training; no per-step rollouts, no
discriminator), and the student is trained on these (chosen = teacher, rejected = student snapshot) pairs
with Direct Preference Optimization (DPO; Rafailov et al., 2023).

Where the paper is silent here, the choices made (each a knob of `soda_loss`):
  * the loss is DPO's sigmoid loss on summed (not length-normalised) sequence log-probs of the response tokens:
        L = -log sigmoid( beta * [ (log pi(y_t|x) - log pi_ref(y_t|x)) - (log pi(y_s|x) - log pi_ref(y_s|x)) ] )
    averaged over pairs;
  * beta = 0.1 (DPO's and TRL's default);
  * the reference pi_ref is the student as it was when the snapshot was taken (the model that wrote y_s),
    frozen; its log-probs of both responses never change, so they can be computed once and cached;
  * `nll_weight` (default 0: pure DPO) adds that multiple of the chosen responses' token-mean NLL (the
    RPO / "DPO + SFT" regulariser), for when DPO alone lowers the chosen log-probs too;
  * several teachers: each teacher response is a chosen, paired with the one snapshot of its prompt.
Log-probs are at temperature 1 (the scored distribution, not the sampling one): DPO's reference-ratio is
defined on the model's own distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def sequence_logprobs(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed log-prob of each response: token_logprobs [P, T] (log pi of each response token), mask [P, T]
    (1 on the response's tokens, its end-of-turn included) -> [P]."""
    return (token_logprobs * mask).sum(-1)


@dataclass
class PreferenceTerms:
    """The loss and what to log: `loss` (0-dim, with grad) and, per pair [P], detached:
    `chosen_reward` = beta (log pi - log pi_ref)(y_t), `rejected_reward` likewise for y_s, and `margin` their
    difference; `accuracy` = mean[margin > 0]."""

    loss: torch.Tensor
    chosen_reward: torch.Tensor
    rejected_reward: torch.Tensor
    margin: torch.Tensor
    accuracy: torch.Tensor


def soda_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float = 0.1,
    chosen_nll: torch.Tensor | None = None,
    nll_weight: float = 0.0,
) -> PreferenceTerms:
    """DPO over P (teacher response, student snapshot) pairs; see the module doc.

    policy_chosen, policy_rejected      [P] summed log pi(y|x) of the teacher response / the snapshot (with grad)
    reference_chosen, reference_rejected [P] the same under the frozen reference (no grad needed)
    chosen_nll                           0-dim token-mean NLL of the chosen responses (needed if nll_weight > 0)
    """
    if beta <= 0:
        raise ValueError(f"soda_loss: beta must be > 0, got {beta}")
    shapes = {t.shape for t in (policy_chosen, policy_rejected, reference_chosen, reference_rejected)}
    if len(shapes) != 1 or policy_chosen.dim() != 1:
        raise ValueError(f"soda_loss: the four log-prob tensors must share one [P] shape, got {sorted(shapes)}")
    chosen = beta * (policy_chosen - reference_chosen.detach())
    rejected = beta * (policy_rejected - reference_rejected.detach())
    margin = chosen - rejected
    loss = -F.logsigmoid(margin).mean()
    if nll_weight:
        if chosen_nll is None:
            raise ValueError("soda_loss: nll_weight > 0 needs chosen_nll")
        loss = loss + nll_weight * chosen_nll
    return PreferenceTerms(
        loss=loss,
        chosen_reward=chosen.detach(),
        rejected_reward=rejected.detach(),
        margin=margin.detach(),
        accuracy=(margin.detach() > 0).float().mean(),
    )
