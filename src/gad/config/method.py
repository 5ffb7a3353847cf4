"""`method`: the typed definition of each method's config node.

Each knob's default and its meaning are written once, next to each other, in the method's YAML
file (conf/method/gad.yaml, kd.yaml, seqkd.yaml); here each key has its type and the rules a value
must follow. `gad.config.validate` checks the composed `method` node against the dataclass its
`_target_` names (METHODS) before anything loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from gad.config.bounds import TEMPERATURE_RULE, require_fits, temperature_ok
from gad.config.typed import finite, require
from gad.errors import url_has_credentials


@dataclass
class OptimizerConfig:
    """`method.generator_optimizer`, `method.discriminator_optimizer`: a partial torch optimizer."""

    _target_: str
    _partial_: bool
    lr: float
    betas: list[float]
    weight_decay: float

    def __post_init__(self) -> None:
        require(self.lr > 0 and finite(self.lr), "lr", self.lr, "must be a finite number > 0")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")


@dataclass
class SchedulerConfig:
    """`method.*_scheduler`: gad.methods.optim.warmup_schedule, counted in updates (that network's optimizer
    steps; "steps" are method steps everywhere)."""

    _target_: str
    _partial_: bool
    warmup_updates: int
    total_updates: Optional[int]

    def __post_init__(self) -> None:
        require(self.warmup_updates >= 0, "warmup_updates", self.warmup_updates, "must be an integer >= 0")
        require(
            self.total_updates is None or self.total_updates >= 1,
            "total_updates",
            self.total_updates,
            "must be null or an integer >= 1",
        )


@dataclass
class MethodConfig:
    """What every method has: the student's optimisation and how a step's forwards are cut."""

    _target_: str
    micro_batch_size: int
    max_tokens_per_micro_batch: Optional[int]
    generator_optimizer: OptimizerConfig
    generator_scheduler: SchedulerConfig
    generator_grad_clip: Optional[float]
    seed: int
    profile: bool

    def __post_init__(self) -> None:
        require(self.micro_batch_size >= 1, "micro_batch_size", self.micro_batch_size, "must be an integer >= 1")
        require(
            self.max_tokens_per_micro_batch is None or self.max_tokens_per_micro_batch >= 1,
            "max_tokens_per_micro_batch",
            self.max_tokens_per_micro_batch,
            "must be null or an integer >= 1",
        )
        require(
            self.generator_grad_clip is None or self.generator_grad_clip > 0 and finite(self.generator_grad_clip),
            "generator_grad_clip",
            self.generator_grad_clip,
            "must be null or a finite number > 0",
        )


@dataclass
class SamplingConfig(MethodConfig):
    """An on-policy method: it samples from the student (gad.rollout)."""

    top_p: float
    max_new_tokens: int
    rollout_batch_size: int
    rollout_segment_tokens: Optional[int]

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 < self.top_p <= 1, "top_p", self.top_p, "must be in (0, 1]")
        require(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "must be an integer >= 1")
        require(self.rollout_batch_size >= 1, "rollout_batch_size", self.rollout_batch_size, "must be an integer >= 1")
        require(
            self.rollout_segment_tokens is None or self.rollout_segment_tokens >= 1,
            "rollout_segment_tokens",
            self.rollout_segment_tokens,
            "must be null or an integer >= 1",
        )


@dataclass
class GADConfig(SamplingConfig):
    """`method=gad` (conf/method/gad.yaml): gad.methods.GADModule."""

    temperature: float
    num_samples: int
    warmup_steps: int
    d_only_steps: int
    adversarial_steps: int
    alpha: float
    kl_coef: float
    clip_ratio: float
    d_loss: str
    generator_warmup: bool
    discriminator_warmup: bool
    off_policy: bool
    off_policy_d_steps: int
    share_prompt: bool
    warmup_lr: Optional[float]
    discriminator_optimizer: OptimizerConfig
    discriminator_scheduler: SchedulerConfig
    discriminator_grad_clip: Optional[float]

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.temperature > 0 and finite(self.temperature),
            "temperature",
            self.temperature,
            "must be a finite number > 0",
        )
        require(
            self.num_samples >= 2,
            "num_samples",
            self.num_samples,
            "must be an integer >= 2 (advantages are normalised within each prompt's samples)",
        )
        # upper bounds (gad/config/bounds.py)
        require(temperature_ok(self.temperature), "temperature", self.temperature, TEMPERATURE_RULE)
        require_fits({"num_samples": self.num_samples, "max_new_tokens": self.max_new_tokens})  # one prompt's
        for key in ("warmup_steps", "d_only_steps", "adversarial_steps", "off_policy_d_steps"):
            require(getattr(self, key) >= 0, key, getattr(self, key), "must be an integer >= 0")
        require(
            self.d_only_steps <= self.warmup_steps,
            "d_only_steps",
            self.d_only_steps,
            f"must be <= method.warmup_steps={self.warmup_steps}",
        )
        require(0 <= self.alpha <= 1, "alpha", self.alpha, "must be in [0, 1]")
        require(self.kl_coef >= 0 and finite(self.kl_coef), "kl_coef", self.kl_coef, "must be a finite number >= 0")
        require(
            self.clip_ratio > 0 and finite(self.clip_ratio),
            "clip_ratio",
            self.clip_ratio,
            "must be a finite number > 0",
        )
        require(self.d_loss in ("bt", "bce"), "d_loss", self.d_loss, "must be 'bt' or 'bce'")
        require(
            self.warmup_lr is None or self.warmup_lr > 0 and finite(self.warmup_lr),
            "warmup_lr",
            self.warmup_lr,
            "must be a finite number > 0 (or null: the same as generator_optimizer.lr)",
        )
        require(
            self.discriminator_grad_clip is None
            or self.discriminator_grad_clip > 0
            and finite(self.discriminator_grad_clip),
            "discriminator_grad_clip",
            self.discriminator_grad_clip,
            "must be null or a finite number > 0",
        )


@dataclass
class KDTeacherConfig:
    """`method.teacher` of KD (gad/kd_teachers/): `kind` picks the teacher and which keys it reads.

    local: path, tokenizer, top_k (null = full distributions), dtype, attn_implementation, build.
    api:   base_url, model, top_k (required), api_key_env, token_ids, max_tokens, request_batch_size,
           concurrency, timeout_s, max_retries, extra_body.
    The other kind's keys may stay (conf/method/kd.yaml lists them all) and are ignored. The
    defaults are kd.yaml's (documented there), for teachers built outside a composed config.
    """

    kind: str = "local"
    path: Optional[str] = None
    tokenizer: Optional[str] = None
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    build: Optional[dict[str, Any]] = None
    top_k: Optional[int] = None
    base_url: Optional[str] = None
    model: Optional[str] = None
    api_key_env: str = "VLLM_API_KEY"
    token_ids: bool = True
    max_tokens: int = 0
    request_batch_size: int = 8
    concurrency: int = 8
    timeout_s: float = 120
    max_retries: int = 3
    extra_body: dict[str, Any] = field(default_factory=dict)

    LOCAL = ("path", "tokenizer", "top_k", "dtype", "attn_implementation", "build")
    API = (
        "base_url",
        "model",
        "top_k",
        "api_key_env",
        "token_ids",
        "max_tokens",
        "request_batch_size",
        "concurrency",
        "timeout_s",
        "max_retries",
        "extra_body",
    )

    def __post_init__(self) -> None:
        require(self.kind in ("local", "api"), "kind", self.kind, "must be 'local' or 'api'")
        require(
            self.top_k is None or self.top_k >= 1,
            "top_k",
            self.top_k,
            "must be an integer >= 1 (null: full distributions, local teachers only)",
        )
        if self.kind == "local":
            require(
                bool(self.path),
                "path",
                self.path,
                "set the teacher model (a Hugging Face folder or hub id) for method.teacher.kind=local",
            )
            require(
                self.dtype in ("float32", "bfloat16", "float16"),
                "dtype",
                self.dtype,
                "must be float32, bfloat16 or float16",
            )
            return
        require(
            bool(self.base_url),
            "base_url",
            self.base_url,
            "set the server's API root (e.g. http://127.0.0.1:8000/v1) for method.teacher.kind=api",
        )
        require(  # never echoed: the password would reach the error line (the key comes from api_key_env)
            not url_has_credentials(self.base_url),
            "base_url",
            None,
            "must not carry credentials (user:password@): put the key in the environment variable "
            "named by method.teacher.api_key_env",
        )
        require(
            self.top_k is not None,
            "top_k",
            self.top_k,
            "an API teacher needs a number of log-probs per "
            "position (vLLM allows up to its --max-logprobs, 20 by default)",
        )
        for key in ("request_batch_size", "concurrency"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "must be an integer >= 1")
        require(self.max_tokens >= 0, "max_tokens", self.max_tokens, "must be an integer >= 0")
        require(self.timeout_s > 0, "timeout_s", self.timeout_s, "must be > 0")
        require(self.max_retries >= 0, "max_retries", self.max_retries, "must be an integer >= 0")

    def arguments(self) -> dict[str, Any]:
        """The keys the chosen kind reads, as keyword arguments of its teacher class."""
        return {key: getattr(self, key) for key in (self.LOCAL if self.kind == "local" else self.API)}


@dataclass
class KDConfig(SamplingConfig):
    """`method=kd` (conf/method/kd.yaml): gad.methods.KDModule."""

    teacher: KDTeacherConfig
    steps: int
    alpha: float
    alpha_warmup_steps: int
    softening_temperature: float
    on_policy: bool
    rollout_temperature: float
    samples_per_prompt: int

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.steps >= 1, "steps", self.steps, "must be an integer >= 1")
        require(0 <= self.alpha <= 1, "alpha", self.alpha, "must be in [0, 1]")
        require(self.alpha_warmup_steps >= 0, "alpha_warmup_steps", self.alpha_warmup_steps, "must be an integer >= 0")
        require(
            self.softening_temperature > 0 and finite(self.softening_temperature),
            "softening_temperature",
            self.softening_temperature,
            "must be a finite number > 0 (the softening temperature T of the KL)",
        )
        require(
            self.rollout_temperature > 0 and finite(self.rollout_temperature),
            "rollout_temperature",
            self.rollout_temperature,
            "must be a finite number > 0",
        )
        require(self.samples_per_prompt >= 1, "samples_per_prompt", self.samples_per_prompt, "must be an integer >= 1")
        # upper bounds (gad/config/bounds.py)
        for key in ("softening_temperature", "rollout_temperature"):
            require(temperature_ok(getattr(self, key)), key, getattr(self, key), TEMPERATURE_RULE)
        require_fits({"samples_per_prompt": self.samples_per_prompt, "max_new_tokens": self.max_new_tokens})


@dataclass
class SeqKDConfig(MethodConfig):
    """`method=seqkd` (conf/method/seqkd.yaml): gad.methods.SeqKDModule."""

    steps: int

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.steps >= 1, "steps", self.steps, "must be an integer >= 1")


METHODS: dict[str, type[MethodConfig]] = {
    "gad.methods.GADModule": GADConfig,
    "gad.methods.KDModule": KDConfig,
    "gad.methods.SeqKDModule": SeqKDConfig,
}
