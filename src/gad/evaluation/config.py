"""The typed definition of each knob group of conf/eval.yaml, and `check`, which validates a
composed eval config before src/eval.py imports torch or loads a model (gad.cli.start's `check`).
Each knob is documented once, next to its default, in conf/eval.yaml (and conf/judge/*.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import DictConfig

from gad.config.bounds import TEMPERATURE_RULE, require_fits, temperature_ok
from gad.config.typed import finite, require, typed

# metric -> direction (+1: higher is better), the values `select.metric` may name
METRICS = {
    "judge_score": +1,
    "judge_lc_regression": +1,
    "judge_lc_subset": +1,
    "toy_accuracy": +1,
    "rougeL": +1,
    "f1_mean": +1,
    "perplexity": -1,
}
# `select.metric` may also name a harness metric: harness:<task>:<metric>[,<filter>] (gad.evaluation.harness)
HARNESS_METRIC = "harness:"


@dataclass
class SelectConfig:
    """`select` of conf/eval.yaml (each knob documented there, next to its default)."""

    run: Optional[str]
    prompts: Any
    metric: str
    max_length_ratio: Optional[float]
    include_last: bool

    def __post_init__(self) -> None:
        require(
            self.metric == "auto" or self.metric in METRICS or harness_metric(self.metric) is not None,
            "metric",
            self.metric,
            f"must be auto, one of {', '.join(sorted(METRICS))}, or harness:<task>:<metric> (e.g. harness:gsm8k:exact_match)",
        )
        require(
            self.max_length_ratio is None or self.max_length_ratio > 0,
            "max_length_ratio",
            self.max_length_ratio,
            "must be a number > 0 or null",
        )


@dataclass
class Limit:
    """The entry config's `limit`: the first N prompts of every set."""

    limit: Optional[int]

    def __post_init__(self) -> None:
        require(self.limit is None or self.limit >= 1, "limit", self.limit, "must be null or an integer >= 1")


@dataclass
class GenerationParams:
    """`generation` in conf/eval.yaml (each key documented there)."""

    max_new_tokens: int
    greedy: bool
    temperature: float
    top_p: float
    seed: int
    batch_size: int
    system_prompt: Optional[str]  # gad.chat policy for conversations without a system turn (None: none)

    def __post_init__(self) -> None:
        self.system_prompt = self.system_prompt or "none"
        require(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "must be >= 1")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        if not self.greedy:  # sampling only: greedy decoding reads neither
            require(finite(self.temperature) and self.temperature > 0, "temperature", self.temperature, "must be > 0")
            require(finite(self.top_p) and 0 < self.top_p <= 1, "top_p", self.top_p, "must be > 0 and <= 1")
            require(temperature_ok(self.temperature), "temperature", self.temperature, TEMPERATURE_RULE)  # bounds.py
        require_fits({"batch_size": self.batch_size, "max_new_tokens": self.max_new_tokens})  # gad/config/bounds.py

    def key(self) -> dict[str, Any]:
        """What changes the text (batch size does not, for greedy decoding)."""
        if self.greedy:
            return {"max_new_tokens": self.max_new_tokens, "greedy": True}
        return {
            "max_new_tokens": self.max_new_tokens,
            "greedy": False,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
        }


@dataclass
class PerplexityParams:
    """`perplexity` in conf/eval.yaml (each key documented there)."""

    enabled: bool
    batch_size: int
    max_prompt_tokens: int
    max_response_tokens: int

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_prompt_tokens", "max_response_tokens"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        lengths = {"max_prompt_tokens": self.max_prompt_tokens, "max_response_tokens": self.max_response_tokens}
        require_fits({"batch_size": self.batch_size}, lengths)  # gad/config/bounds.py

    def key(self) -> dict[str, Any]:
        return {"max_prompt_tokens": self.max_prompt_tokens, "max_response_tokens": self.max_response_tokens}


@dataclass
class LengthControl:
    """`length_control` in conf/eval.yaml (documented there): the ratio bounds of the subset score."""

    low: float
    high: float

    def __post_init__(self) -> None:
        require(finite(self.low) and 0 < self.low <= 1, "low", self.low, "must be > 0 and <= 1")
        require(finite(self.high) and self.high >= 1, "high", self.high, "must be >= 1")


def harness_metric(metric: str) -> tuple[str, str] | None:
    """(task, metric) of `harness:<task>:<metric>`; None for any other text."""
    if not metric.startswith(HARNESS_METRIC):
        return None
    task, _, name = metric[len(HARNESS_METRIC) :].partition(":")
    return (task, name) if task and name else None


CHAT_TEMPLATE_MODES = ("generative", "always", "never")  # which harness tasks see the model's chat template


@dataclass
class HarnessParams:
    """`harness` in conf/eval.yaml (each key documented there): lm-evaluation-harness tasks beside the judge."""

    tasks: list[str]
    include_path: Optional[str]
    limit: Optional[int]
    num_fewshot: Optional[int]
    batch_size: Optional[int]
    chat_template: str
    bootstrap_iters: int
    log_samples: bool

    def __post_init__(self) -> None:
        for name in self.tasks:
            require(bool(str(name).strip()), "tasks", self.tasks, "task names must not be empty")
        require(self.limit is None or self.limit >= 1, "limit", self.limit, "must be null or an integer >= 1")
        require(self.num_fewshot is None or self.num_fewshot >= 0, "num_fewshot", self.num_fewshot, "must be >= 0")
        require(self.batch_size is None or self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        require(
            self.chat_template in CHAT_TEMPLATE_MODES,
            "chat_template",
            self.chat_template,
            f"must be one of {', '.join(CHAT_TEMPLATE_MODES)}",
        )
        require(self.bootstrap_iters >= 0, "bootstrap_iters", self.bootstrap_iters, "must be >= 0")


def check(cfg: DictConfig) -> None:
    """Every knob group of the eval config against its dataclass: one `error:` line naming the key
    (prompt sets and models are checked as they are read, still before any model loads)."""
    from gad.api.settings import api_key_from_env
    from gad.evaluation.judge import JudgeConfig

    typed(Limit, {"limit": cfg.get("limit")}, "")
    typed(SelectConfig, cfg.select, "select")
    typed(GenerationParams, cfg.generation, "generation")
    typed(PerplexityParams, cfg.perplexity, "perplexity")
    typed(LengthControl, cfg.length_control, "length_control")
    if cfg.get("harness") is not None:
        typed(HarnessParams, cfg.harness, "harness")
    if cfg.get("judge") is not None:
        api_key_from_env(typed(JudgeConfig, cfg.judge, "judge"), "judge")  # a missing key fails now, not mid-run
