"""`method=ropd`: Rubric-based On-policy Distillation's knobs (gad.methods.ropd.ROPDModule), torch-free so a
mistake is one line before torch loads. Registered like the project's other method configs (its `target`;
gad.config.registry imports this module).

Defaults: the official implementation's (github.com/Peregrine123/ROPD_official: verl/trainer/config/ropd.yaml,
baseline_grpo.yaml, judge_providers.yaml, algo/ropd_clients.py) where it sets them; where it is silent or this
project chose otherwise, the knob's help says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from gad.api.settings import ClientSettings
from gad.config.bounds import TEMPERATURE_RULE, require_fits, temperature_ok
from gad.config.method import OptimizerConfig, SamplingConfig
from gad.config.typed import finite, knob, nested, require


@dataclass
class GraderConfig(ClientSettings):
    """`method.grader`: the OpenAI-compatible chat endpoint that plays the Rubricator and the Verifier."""

    base_url: Optional[str] = knob(
        None, "API root; null: https://api.openai.com/v1 (or $OPENAI_BASE_URL), or the toy grader with toy_server"
    )
    toy_server: bool = knob(
        False, "start gad.toy.grader (rule-based, 127.0.0.1) for this run and grade there; base_url must be null"
    )
    api_key_env: str = knob("OPENAI_API_KEY", "NAME of the environment variable holding the key (never the key)")
    require_api_key: bool = knob(True, "stop at once when that variable is unset (false: a keyless local server)")
    model: str = knob("gpt-5.2-chat-latest", "the Rubricator's model (the official default)")
    verifier_model: Optional[str] = knob(None, "the Verifier's model (null: the same as `model`)")
    temperature: Optional[float] = knob(None, "sampling temperature of both roles (null: the server's, as official)")
    max_tokens_field: str = knob(
        "max_completion_tokens", "request field of the caps: max_tokens or max_completion_tokens"
    )
    rubric_max_tokens: Optional[int] = knob(8192, "cap on a Rubricator reply (official: 8192 output tokens)")
    verdict_max_tokens: Optional[int] = knob(4096, "cap on a Verifier reply (official: 4096 output tokens)")
    extra_body: dict[str, Any] = knob({}, "extra JSON fields of every request (official: reasoning_effort high)")
    concurrency: int = knob(4, "prompts graded at once (official: max_concurrency 4 groups)")
    timeout_s: float = knob(120.0, "per-attempt read timeout, seconds (official: 120 rubricator, 60 verifier)")
    connect_timeout_s: float = knob(10.0, "TCP/TLS connect timeout, seconds")
    max_retries: int = knob(2, "HTTP retries per request on 429/5xx/timeouts (the openai client's layer; official 2)")
    backoff_initial_s: float = knob(1.0, "first backoff delay without Retry-After; doubles per retry (official)")
    backoff_max_s: float = knob(8.0, "cap on one backoff delay (official)")
    http_backend: str = knob("aiohttp", "aiohttp or httpx (the SDK's default); falls back to httpx")
    # A reply that is not the schema (not JSON, a wrong count, a missing field) is asked again; the official client
    # re-asks per error kind (rubricator: 2 schema / 2 validation, verifier: 1 parse / 1 schema): one knob here.
    parse_retries: int = knob(2, "re-request an unparseable rubric or verdict this many times, then the prompt fails")
    min_criteria: int = knob(4, "fewest rubric items a rubric may have (official: 4)")
    max_criteria: int = knob(12, "most rubric items a rubric may have (official: 12)")
    rubric_instructions: str = knob("", "extra text for the Rubricator's [Additional Instructions] (official: empty)")
    scoring_instructions: str = knob("", "extra text for the Verifier's additional scoring rules (official: empty)")
    abort_after_failures: int = knob(16, "stop the run after this many failed requests in a row (0: never)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.model.strip()), "model", self.model, "must name the grader model")
        require(
            self.verifier_model is None or bool(self.verifier_model.strip()),
            "verifier_model",
            self.verifier_model,
            "must be null or name a model",
        )
        require(
            not (self.toy_server and self.base_url),
            "toy_server",
            self.toy_server,
            "starts its own server: leave method.grader.base_url null",
        )
        t = self.temperature
        require(t is None or (finite(t) and 0 <= t <= 2), "temperature", t, "must be null or in [0, 2]")
        require(
            self.max_tokens_field in ("max_tokens", "max_completion_tokens"),
            "max_tokens_field",
            self.max_tokens_field,
            "must be max_tokens or max_completion_tokens",
        )
        for name in ("rubric_max_tokens", "verdict_max_tokens"):
            value = getattr(self, name)
            require(value is None or value >= 1, name, value, "must be null or an integer >= 1")
        require(self.concurrency >= 1, "concurrency", self.concurrency, "must be an integer >= 1")
        require(self.parse_retries >= 0, "parse_retries", self.parse_retries, "must be an integer >= 0")
        require(self.min_criteria >= 1, "min_criteria", self.min_criteria, "must be an integer >= 1")
        require(
            self.max_criteria >= self.min_criteria,
            "max_criteria",
            self.max_criteria,
            f"must be >= method.grader.min_criteria={self.min_criteria}",
        )
        require(
            self.abort_after_failures >= 0, "abort_after_failures", self.abort_after_failures, "must be an integer >= 0"
        )

    @property
    def verifier(self) -> str:
        return self.verifier_model or self.model


@dataclass
class ROPDConfig(SamplingConfig):
    """`method=ropd` (conf/method/ropd.yaml): gad.methods.ropd.ROPDModule. Defaults: the official config's
    (Qwen3-4B student, batch 32 prompts, 8 rollouts, GRPO without std scaling, lr 1e-6 constant)."""

    target: ClassVar[str] = "gad.methods.ropd.ROPDModule"

    temperature: float = knob(1.0, "rollout temperature (official: 1.0); the policy loss's log-probs use the same")
    num_samples: int = knob(8, "rollouts per prompt: the GRPO group, and the student responses the Rubricator sees")
    # Not in the paper or the official code: a random-init toy student never writes a right answer, so its rubric
    # scores would barely vary; paper scale starts from an instruct model and trains no warm-up (0).
    warmup_steps: int = knob(0, "steps of CE on the teacher responses (SeqKD) before the rubric steps (official: 0)")
    warmup_lr: Optional[float] = knob(None, "learning rate of the warm-up's CE updates (null: generator_optimizer.lr)")
    rubric_steps: int = knob(500, "rubric-rewarded policy steps after the warm-up (official total_training_steps)")
    kl_coef: float = knob(0.0, "k3 KL to the student at the first rubric step (official: no KL loss, no KL reward)")
    clip_ratio: float = knob(0.2, "PPO clip range (official 0.2; one update per rollout here, so it never clips)")
    scale_advantages: bool = knob(False, "divide advantages by the group's std (official norm_adv_by_std_in_grpo: off)")
    share_prompt: bool = knob(True, "run each prompt's forward once per group of rollouts (gad.prompt_sharing)")
    grader: GraderConfig = nested(GraderConfig, "the Rubricator/Verifier endpoint and the rubric protocol's caps")
    grader_cache: str = knob(".cache", "replies are journaled in <this>/ropd/ (a resumed run asks nothing twice)")
    generator_optimizer: OptimizerConfig = nested(
        OptimizerConfig,
        "official actor optimizer: AdamW, lr 1e-6 constant, weight decay 0.01",
        lr=1.0e-6,
        weight_decay=0.01,
    )
    generator_grad_clip: Optional[float] = knob(1.0, "max global grad norm of the student (verl's actor default 1.0)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.temperature > 0 and finite(self.temperature), "temperature", self.temperature, "must be a number > 0"
        )
        require(temperature_ok(self.temperature), "temperature", self.temperature, TEMPERATURE_RULE)
        require(
            self.num_samples >= 2,
            "num_samples",
            self.num_samples,
            "must be an integer >= 2 (advantages are centred within each prompt's rollouts)",
        )
        require_fits({"num_samples": self.num_samples, "max_new_tokens": self.max_new_tokens})
        for key in ("warmup_steps", "rubric_steps"):
            require(getattr(self, key) >= 0, key, getattr(self, key), "must be an integer >= 0")
        require(self.warmup_steps + self.rubric_steps >= 1, "rubric_steps", self.rubric_steps, "no steps to train")
        require(
            self.warmup_lr is None or self.warmup_lr > 0 and finite(self.warmup_lr),
            "warmup_lr",
            self.warmup_lr,
            "must be a finite number > 0 (or null: the same as generator_optimizer.lr)",
        )
        require(self.kl_coef >= 0 and finite(self.kl_coef), "kl_coef", self.kl_coef, "must be a finite number >= 0")
        require(self.clip_ratio > 0 and finite(self.clip_ratio), "clip_ratio", self.clip_ratio, "must be a number > 0")
        require(bool(self.grader_cache), "grader_cache", self.grader_cache, "must name a folder")
