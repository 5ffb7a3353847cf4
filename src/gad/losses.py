"""The maths of GAD as small pure functions on tensors.

Shapes: B prompts, N samples per prompt, T response tokens, V vocabulary.
Masks are 0/1 tensors of the same shape as the values they mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------- token bookkeeping


def response_mask(response_ids: torch.Tensor, eos_ids: torch.Tensor) -> torch.Tensor:
    """1 for every response token up to and including the first end-of-sequence token.

    A response that never emits eos (it ran into `max_new_tokens`) is valid to its end.
    `eos_ids` holds every id that ends generation (instruct models often have several).
    """
    is_eos = torch.isin(response_ids, eos_ids.to(response_ids.device))
    eos_before = torch.cumsum(is_eos, dim=-1) - is_eos.long()
    return (eos_before == 0).long()


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as `generate` assigns them (left padding gets 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens where `mask` is 1 (token-mean aggregation); 0 for an empty mask."""
    return masked_sum(values, mask) / mask.sum().clamp(min=1)


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits are upcast before softmax; float64 (tests) stays float64."""
    return x if x.dtype == torch.float64 else x.float()


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log q(token) under softmax(logits / temperature): [..., V], [...] -> [...].

    The policy gradient needs the log-probs of the distribution that was actually sampled
    from, so rollout log-probs use the sampling temperature.
    """
    logits = _at_least_float32(logits) / temperature
    picked = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) per position: [..., V] -> [...]."""
    logp = torch.log_softmax(_at_least_float32(logits) / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


# ---------------------------------------------------------------- discriminator


def bradley_terry_loss(teacher_scores: torch.Tensor, student_scores: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of -log sigmoid(D(teacher) - D(student)).

    teacher_scores [B], student_scores [B, N]: each of a prompt's N samples is paired with
    that prompt's teacher response.
    """
    return -F.logsigmoid(teacher_scores.unsqueeze(-1) - student_scores).mean()


def bce_discriminator_loss(teacher_scores: torch.Tensor, student_scores: torch.Tensor) -> torch.Tensor:
    """The paper's ablation: -log sigmoid(D(y_t)) - log(1 - sigmoid(D(y_s))), mean over pairs."""
    per_pair = -F.logsigmoid(teacher_scores.unsqueeze(-1)) - F.logsigmoid(-student_scores)
    return per_pair.mean()


DISCRIMINATOR_LOSSES = {"bt": bradley_terry_loss, "bce": bce_discriminator_loss}


def discriminator_accuracy(teacher_scores: torch.Tensor, student_scores: torch.Tensor) -> torch.Tensor:
    """Fraction of (teacher, sample) pairs where the teacher response scores higher."""
    return (teacher_scores.unsqueeze(-1) > student_scores).float().mean()


# ---------------------------------------------------------------- generator


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6, scale: bool = True) -> torch.Tensor:
    """GRPO advantages: rewards [B, N] normalised within each prompt's group of N samples.

    Uses the unbiased standard deviation, as verl does. A group whose rewards are all equal
    gets zero advantage (no signal), not a division by zero. `scale=False`: the mean is subtracted
    only (verl's `norm_adv_by_std_in_grpo: false`, ROPD's official setting).
    """
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=-1, keepdim=True) + eps)


def ppo_clip_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, clip_ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO clipped surrogate loss and whether each token was clipped.

    With one optimizer step per rollout batch `old_logprobs` is `logprobs.detach()`: the
    ratio is exactly 1 and the gradient is the plain policy gradient -A * grad log q.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio) * advantages
    loss = -torch.minimum(unclipped, clipped)
    return loss, (clipped < unclipped).float()


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(q || ref): exp(ref - logq) - (ref - logq) - 1 (>= 0)."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1.0


def rollout_correction(
    logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor, cap: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token weights of the policy-gradient term and the summed absolute log-prob gap over the real
    tokens, for the training forward's log-probs `logp` (detached) and the sampler's `engine_logp` [rows, R]
    (`Rollout.sampler_logprobs`: e.g. gad.vllm_rollout's engine).

    Truncated importance sampling (verl's `tis_imp_ratio_cap`): the tokens were drawn from the sampler's
    distribution, the gradient is the training policy's; each token's term is weighted by
    min(p_train / p_engine, cap). `cap` None: weights 1 (no correction)."""
    engine_logp = engine_logp.to(logp.device)
    real = mask.bool()
    gap = ((logp - engine_logp).abs() * real).sum()
    if cap is None:
        return torch.ones_like(logp), gap
    return torch.exp(logp - engine_logp).clamp(max=cap) * real, gap


def rollout_logprob_gap(
    logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, engine_logp: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Summed |log p_train - log p_engine| over the real tokens, from a training forward's logits at the
    real response tokens, flat [mask.sum(), V] (DistillModule.response_logprobs with `with_logits`), and the
    sampler's log-probs [rows, R] of `tokens` [rows, R] (`Rollout.sampler_logprobs`)."""
    real = mask.bool()
    picked = token_logprobs(logits, tokens[real], temperature)
    return (picked - engine_logp.to(picked.device)[real]).abs().sum()
