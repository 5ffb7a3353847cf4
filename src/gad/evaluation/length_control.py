"""Length-controlled judge scores: judges favour longer answers, so a raw score can reward length.

Per prompt i the judge rates the student (s_i) and its own reference (r_i); the raw score is
100 * sum(s) / (sum(s) + sum(r)) and the per-prompt score p_i = 100 * s_i / (s_i + r_i)
(50 when both are 0). x_i = log(student tokens / reference tokens), each count at least 1.

- `subset`: the raw formula restricted to prompts whose length ratio lies within [low, high]
  (default [0.8, 1.25], symmetric in log space): answers of comparable length only.
- `regression`: ordinary least squares p_i = a + b * x_i; `a` is the predicted per-prompt score at
  ratio 1 (equal lengths) and `b` the points gained per unit of log length ratio. Needs at least
  3 prompts and some spread in x, and ratio 1 inside the observed range of ratios (an interpolation,
  never an extrapolation from answers that are all much shorter or all much longer); NaN otherwise.
  Its scale is the mean per-prompt score, reported beside it as `judge_prompt_mean`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def prompt_score(s: float, r: float) -> float:
    return 100.0 * s / (s + r) if s + r > 0 else 50.0


def raw_score(s: Sequence[float], r: Sequence[float]) -> float:
    total = sum(s) + sum(r)
    if not s:
        return math.nan
    return 100.0 * sum(s) / total if total > 0 else 50.0


def log_ratio(student_tokens: int, reference_tokens: int) -> float:
    return math.log(max(student_tokens, 1) / max(reference_tokens, 1))


def subset_score(
    s: Sequence[float], r: Sequence[float], ratios: Sequence[float], low: float, high: float
) -> tuple[float, int]:
    """(raw score over prompts with low <= ratio <= high, how many)."""
    keep = [i for i, q in enumerate(ratios) if low <= q <= high]
    return raw_score([s[i] for i in keep], [r[i] for i in keep]), len(keep)


def regression(scores: Sequence[float], x: Sequence[float]) -> tuple[float, float]:
    """OLS of scores on x: (intercept at x = 0, slope); NaNs when underdetermined or 0 is outside x's range."""
    n = len(scores)
    if n < 3 or not min(x) <= 0 <= max(x):
        return math.nan, math.nan
    mx, my = sum(x) / n, sum(scores) / n
    sxx = sum((xi - mx) ** 2 for xi in x)
    if sxx <= 1e-12:
        return math.nan, math.nan
    slope = sum((xi - mx) * (yi - my) for xi, yi in zip(x, scores)) / sxx
    return my - slope * mx, slope
