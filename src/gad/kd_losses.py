"""The maths of blended knowledge distillation (docs/kd.md, gad-method.md section 3) as pure functions.

    L = alpha * CE(y_true) + (1 - alpha) * T^2 * KL( softmax(z_teacher / T) || softmax(z_student / T) )

Every KL here is one operation, `softened_kl`, applied to two *bucket* distributions given as
log-probabilities at temperature 1 over the same outcomes: each side is softened by the same
map, log_softmax(logp / T), and then compared. What differs is how the buckets are made:

* full distributions (a local teacher): the buckets are the vocabulary itself. Softening
  log_softmax(z) by T is softmax(z / T), so this is exactly the formula above.
* top-k + remainder (an API teacher, or a local one asked for top-k): the teacher reports the
  temperature-1 log-probs l_i of a set S of tokens (its k most likely, plus, like vLLM, the
  scored token itself). The buckets are the tokens of S and one bucket "other" for the rest
  of the vocabulary:
      teacher: p(i) = exp(l_i) for i in S,   p(other) = 1 - sum_S exp(l_i)
      student: q(i) = softmax(z)_i for i in S, q(other) = sum over the vocabulary outside S
  Both (|S| + 1)-bucket distributions are then softened by T the same way:
      p_T(b) = p(b)^(1/T) / sum_b' p(b')^(1/T)    (and likewise q_T),
  and the loss term is T^2 * KL(p_T || q_T) over the buckets.
  Why soften the buckets rather than the vocabulary: softmax(z_teacher / T) restricted to S
  needs the teacher's normaliser sum_V p(v)^(1/T), which top-k log-probs do not determine (it
  depends on how the remaining mass is spread), so the exact softened teacher is unknowable.
  Applying one deterministic map to both sides keeps the loss a true divergence (zero iff the
  student's buckets equal the teacher's) and makes it exact in both limits: with S = the whole
  vocabulary (nothing left over) it is the full-distribution KL, and at T = 1 it is the KL of
  the coarse-grained distributions (which, by data processing, lower-bounds the full KL).

Shapes: [..., V] logits / log-probs over the vocabulary, [..., K] listed teacher tokens;
per-token results drop the last dimension. Computation runs in float32, or float64 when the
inputs are float64.
"""

from __future__ import annotations

import math

import torch

NEG_INF = float("-inf")


def _work(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate over the whole range (Maechler 2012); -inf at x = 0."""
    x = x.clamp(max=0.0)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def softened_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_T || q_T) over the last dimension, p_T = softmax(teacher_logp / T), q_T = softmax(student_logp / T).

    Inputs are log-probabilities (any normalisation) over the same outcomes; -inf marks an
    outcome with no mass. Outcomes the teacher gives no mass contribute 0 (0 log 0 = 0), with a
    finite gradient.
    """
    p_logp = torch.log_softmax(_work(teacher_logp) / temperature, dim=-1)
    q_logp = torch.log_softmax(_work(student_logp) / temperature, dim=-1)
    p = p_logp.exp()
    empty = p == 0
    diff = (p_logp - q_logp).masked_fill(empty, 0.0)  # -inf - -inf would be nan where p = 0
    return (p.masked_fill(empty, 0.0) * diff).sum(-1)


def coarse_grain(logp: torch.Tensor, keep: int) -> torch.Tensor:
    """The first `keep` outcomes of `logp`, then one bucket with the mass of the others (-inf if none)."""
    rest = torch.logsumexp(logp[..., keep:], dim=-1, keepdim=True)
    return torch.cat([logp[..., :keep], rest], dim=-1)


def full_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-token KL(softmax(z_t / T) || softmax(z_s / T)) for full distributions: [..., Vt], [..., Vs] -> [...].

    Teacher and student share a tokenizer, but their embedding tables may be padded to
    different sizes (Qwen2.5-0.5B: 151936 rows, 7B: 152064); then the ids both have are
    compared one by one and each side's surplus rows form one "other" bucket.
    """
    t = torch.log_softmax(_work(teacher_logits), dim=-1)
    s = torch.log_softmax(_work(student_logits), dim=-1)
    if t.size(-1) != s.size(-1):
        keep = min(t.size(-1), s.size(-1))
        t, s = coarse_grain(t, keep), coarse_grain(s, keep)
    return softened_kl(t, s, temperature)


def teacher_buckets(logprobs: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """[..., K] temperature-1 teacher log-probs of its listed tokens -> [..., K+1] with log p(other) last.

    Unlisted slots (`valid` False, e.g. padding) get -inf. A listed mass that rounds to >= 1
    leaves an empty "other" bucket.
    """
    lp = _work(logprobs)
    if valid is not None:
        lp = lp.masked_fill(~valid, NEG_INF)
    rest = log1mexp(torch.logsumexp(lp, dim=-1, keepdim=True))
    return torch.cat([lp, rest], dim=-1)


def student_buckets(student_logits: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """[..., V] student logits -> [..., K+1]: log q of the teacher's listed ids, then log q(other).

    q(other) is summed over the unlisted vocabulary directly (not 1 - sum, which cancels
    catastrophically when the listed tokens hold almost all the mass). Listed ids must be
    distinct within a position; ids outside the student's vocabulary must be marked invalid.
    """
    logq = torch.log_softmax(_work(student_logits), dim=-1)
    if valid is None:
        valid = torch.ones_like(ids, dtype=torch.bool)
    ids = ids.masked_fill(~valid, 0)
    picked = torch.gather(logq, -1, ids).masked_fill(~valid, NEG_INF)
    listed = torch.zeros_like(logq, dtype=torch.bool).scatter(-1, ids, valid)
    rest = torch.logsumexp(logq.masked_fill(listed, NEG_INF), dim=-1, keepdim=True)
    return torch.cat([picked, rest], dim=-1)


def topk_kl(
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    student_logits: torch.Tensor,
    temperature: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token softened KL over the teacher's listed tokens plus the remaining mass (module doc): -> [...]."""
    if valid is None:
        valid = torch.ones_like(teacher_ids, dtype=torch.bool)
    valid = valid & (teacher_ids >= 0) & (teacher_ids < student_logits.size(-1))
    teacher = teacher_buckets(teacher_logprobs, valid)
    student = student_buckets(student_logits, teacher_ids, valid)
    # Every id listed: nothing is left over, whatever the teacher's rounded log-probs sum to.
    nothing_left = torch.isneginf(student[..., -1:])
    teacher = torch.cat([teacher[..., :-1], teacher[..., -1:].masked_fill(nothing_left, NEG_INF)], dim=-1)
    return softened_kl(teacher, student, temperature)


def listed_mass(teacher_logprobs: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher probability held by its listed tokens (1 for a full distribution): how much top-k sees."""
    lp = _work(teacher_logprobs)
    if valid is not None:
        lp = lp.masked_fill(~valid, NEG_INF)
    return torch.logsumexp(lp, dim=-1).exp().clamp(max=1.0)


def blended_loss(ce: torch.Tensor, kl: torch.Tensor, alpha: float, temperature: float) -> torch.Tensor:
    """alpha * CE + (1 - alpha) * T^2 * KL (token means; T^2 keeps KL gradients on CE's scale)."""
    return alpha * ce + (1.0 - alpha) * temperature**2 * kl


def alpha_at(step: int, alpha: float, warmup_steps: int) -> float:
    """alpha warmed up linearly from 0 (step 0) to its target at `warmup_steps` and after; 0 steps: constant."""
    if warmup_steps <= 0:
        return alpha
    return alpha * min(1.0, step / warmup_steps)
