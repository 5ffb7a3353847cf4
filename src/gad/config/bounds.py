"""Upper bounds of the temperature and size knobs, each with its reason: a typo (`1e9`, a few zeros too many)
is one line at once, before torch is imported, instead of a MemoryError after minutes, a hang, or a library's
traceback. Imports nothing heavy (gad.config.validate runs before torch is imported).

- Temperatures (sampling: GAD's `method.temperature`, KD's `rollout_temperature`, eval's
  `generation.temperature`; KD's softening `softening_temperature`) are at most MAX_TEMPERATURE = 100:
  softmax(z / T) at T = 100 turns a 10-nat logit gap, wider than the spread among a model's plausible next
  tokens, into 0.1 nat, so the distribution is within ~10% of uniform over the whole vocabulary: noise, with
  nothing to learn or measure. Published settings are 0.6 to 2 (sampling) and 1 to 20 (KD softening).
- Sizes (prompts per batch, samples per prompt, tokens per sequence): the token ids of what one step holds
  at once must fit in this machine's memory, at TOKEN_ID_BYTES = 8 bytes per token (one int64 id: the
  least any token costs; its activations cost thousands of times more), so the bound refuses only what can
  never run here, and a real config is never near it.
- DataLoader workers (`data.num_workers`): at most the CPUs this process may use (each worker is a
  process; more than the CPUs only contend, and a huge count hangs forking them).
"""

from __future__ import annotations

import math
import os

MAX_TEMPERATURE = 100.0
TOKEN_ID_BYTES = 8


def temperature_ok(value: float) -> bool:
    """0 < value <= MAX_TEMPERATURE, finite."""
    return math.isfinite(value) and 0 < value <= MAX_TEMPERATURE


TEMPERATURE_RULE = f"must be a finite number > 0 and <= {MAX_TEMPERATURE:g} (above it, softmax(z / T) is uniform noise)"


def memory_bytes() -> int | None:
    """This machine's physical memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def fits(factors: dict[str, int], terms: dict[str, int] | None = None) -> tuple[str, str] | None:
    """None when prod(factors) x sum(terms) token ids fit in this machine's memory; else (the knob to blame,
    why). Blamed: the largest value among them, the one a typo made huge (knobs are named as given)."""
    memory = memory_bytes()
    tokens = math.prod(factors.values()) * (sum(terms.values()) if terms else 1)
    if memory is None or tokens * TOKEN_ID_BYTES <= memory:
        return None
    sizes = {**factors, **(terms or {})}
    culprit = max(sizes, key=lambda k: sizes[k])
    expression = " x ".join(f"{k} {v}" for k, v in factors.items())
    if terms:
        expression += " x (" + " + ".join(f"{k} {v}" for k, v in terms.items()) + ")"
    return culprit, (
        f"{expression} = {tokens:,} tokens at once: their ids alone ({TOKEN_ID_BYTES} bytes each) need "
        f"{tokens * TOKEN_ID_BYTES / 2**30:,.0f} GiB, more than this machine's {memory / 2**30:,.0f} GiB of memory"
    )


def require_fits(factors: dict[str, int], terms: dict[str, int] | None = None) -> None:
    """`fits` as a rule of a config dataclass (call it from `__post_init__`; keys relative to it)."""
    from gad.config.typed import require

    found = fits(factors, terms)
    if found:
        culprit, why = found
        require(False, culprit, {**factors, **(terms or {})}[culprit], why)


def workers_rule(workers: int) -> str | None:
    """Why `workers` DataLoader workers are too many here, or None."""
    cpus = available_cpus()
    if workers <= cpus:
        return None
    return f"must be <= {cpus}, the CPUs this process may use (each worker is a process; more only contend)"


def check_step_tokens(cfg) -> None:
    """A training step's sequences, across concerns: data.batch_size prompts x the samples per prompt, each up to
    data.max_prompt_tokens + the sampling budget. `GADError` naming the knob when their ids cannot fit here."""
    from omegaconf import OmegaConf

    from gad.errors import GADError

    def get(key: str) -> int | None:
        value = OmegaConf.select(cfg, key, default=None)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    factors = {k: get(k) for k in ("data.batch_size", "method.num_samples", "method.samples_per_prompt")}
    budget = max(("data.max_response_tokens", "method.max_new_tokens"), key=lambda k: get(k) or 0)
    terms = {k: get(k) for k in ("data.max_prompt_tokens", budget)}
    found = fits({k: v for k, v in factors.items() if v}, {k: v for k, v in terms.items() if v})
    if found:
        culprit, why = found
        raise GADError(f"{culprit}={get(culprit)} is invalid: {why}")
