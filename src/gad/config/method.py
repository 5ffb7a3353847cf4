"""`method`: the one definition of each method's knobs: type, default, one-line help and rules.

A method's dataclass (GADConfig, KDConfig, SeqKDConfig, or one a new method declares beside its module,
docs/extending.md) is the single source of every knob: its type, its default (the paper's or the source
document's), a one-line `help` and the rules a value must follow (`__post_init__`). The composed config
starts from these defaults (gad.config.registry registers them with Hydra), conf/method/<name>.yaml says
only what differs (with why), `gad.config.validate` checks the composed node against the dataclass before
anything loads, and `gad.fit.build_module` hands the validated object to the method's module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from gad.config.bounds import TEMPERATURE_RULE, require_fits, temperature_ok
from gad.config.kd_teacher import KDTeacherConfig
from gad.config.rollout import RolloutEngineConfig
from gad.config.typed import finite, knob, nested, require

# gad.losses.DISCRIMINATOR_LOSSES' names without torch: `method.d_loss` is checked before torch loads (a test agrees)
DISCRIMINATOR_LOSS_NAMES = ("bt", "bce")


@dataclass
class OptimizerConfig:
    """`method.generator_optimizer`, `method.discriminator_optimizer`: a partial torch optimizer."""

    _target_: str = "torch.optim.AdamW"
    _partial_: bool = True
    lr: float = knob(1.0e-6, "learning rate")
    betas: list[float] = knob([0.9, 0.999], "AdamW's betas")
    weight_decay: float = knob(0.0, "applied to matrices only, never to biases and norms")

    def __post_init__(self) -> None:
        require(self.lr > 0 and finite(self.lr), "lr", self.lr, "must be a finite number > 0")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")


@dataclass
class SchedulerConfig:
    """`method.*_scheduler`: gad.methods.optim.warmup_schedule, counted in updates (that network's optimizer
    steps; "steps" are method steps everywhere)."""

    _target_: str = "gad.methods.optim.warmup_schedule"
    _partial_: bool = True
    warmup_updates: int = knob(0, "linear LR warm-up, in updates (optimizer steps of this network)")
    total_updates: Optional[int] = knob(None, "null: constant after warm-up; a number: linear decay to 0 at it")

    def __post_init__(self) -> None:
        require(self.warmup_updates >= 0, "warmup_updates", self.warmup_updates, "must be an integer >= 0")
        require(
            self.total_updates is None or self.total_updates >= 1,
            "total_updates",
            self.total_updates,
            "must be null or an integer >= 1",
        )


@dataclass
class RewardTerm:
    """One term of `method.rewards`: a callable named by `_target_` (gad.rewards) and its weight."""

    _target_: Optional[str] = knob(None, "module.function: (prompts, responses, metas) -> one float per response")
    weight: float = knob(1.0, "the term's weight in the summed reward (before the group normalisation)")

    def __post_init__(self) -> None:
        require(finite(self.weight), "weight", self.weight, "must be a finite number")


@dataclass
class MethodConfig:
    """What every method has: the student's optimisation and how a step's forwards are cut.

    `target`: the module this config belongs to (gad.config.registry finds the project's own by it, before
    torch loads; another method's config is its module class's `Config`)."""

    target: ClassVar[str] = ""

    _target_: str = ""
    micro_batch_size: int = knob(8, "padded path: sequences per forward/backward chunk; gradients accumulate")
    # Padding-free training forwards (docs/compute.md): each micro-batch packs whole sequences, real tokens only, up
    # to this many (like verl's max token length per GPU; a longer sequence runs alone); micro_batch_size is then
    # unused by training forwards. 14336 = 4 x (2048 + 1536), the memory of experiment=gad_qwen7b's padded
    # micro-batches. null: the padded path, micro_batch_size rows at the batch's full width.
    max_tokens_per_micro_batch: Optional[int] = knob(
        14336, "padding-free micro-batches of this many real tokens; null: padded"
    )
    generator_optimizer: OptimizerConfig = nested(OptimizerConfig, "the student's optimizer (a torch partial)")
    generator_scheduler: SchedulerConfig = nested(SchedulerConfig, "the student's LR schedule, in updates")
    generator_grad_clip: Optional[float] = knob(0.2, "max global grad norm of the student (null: no clipping)")
    seed: int = knob(0, "the run's seed (conf/method files set ${seed})")
    profile: bool = knob(False, "time each part of the step (CUDA-synchronised) and log it as time/*")
    toy: dict[str, Any] = knob({}, "the toy world's sizes of this method (conf/scale/tiny_toy.yaml merges them in)")

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
    """An on-policy method: it samples from the student (gad.rollout; method.rollout picks the engine)."""

    top_p: float = knob(1.0, "rollout nucleus sampling (1.0 = off, as in the paper)")
    max_new_tokens: int = knob(1536, "rollout length budget (conf/method files tie it to data.max_response_tokens)")
    rollout_batch_size: int = knob(64, "sequences per generate() call")
    # Decode in segments of this many tokens, dropping the rows that ended after each (docs/compute.md): the same
    # sampling law, fewer decode steps on finished rows (docs/measured/padding.md). A cap <= 64 (the toy world's 24)
    # is one segment: the same draws as null. null: one generate() per call, every row decoded until the longest ends.
    rollout_segment_tokens: Optional[int] = knob(64, "decode in segments of this many tokens; null: one call")
    rollout: RolloutEngineConfig = nested(RolloutEngineConfig, "the engine that samples (hf or vllm) and its knobs")

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
    """`method=gad` (conf/method/gad.yaml): gad.methods.GADModule. Defaults: the paper's (Qwen2.5-7B, 8 GPUs)."""

    target: ClassVar[str] = "gad.methods.GADModule"

    temperature: float = knob(0.8, "rollout sampling temperature; the policy loss's log-probs use the same one")
    num_samples: int = knob(8, "N responses sampled per prompt; GRPO advantages are normalised within these N")
    warmup_steps: int = knob(800, "steps of warm-up (about one epoch in the paper): G on CE, D on Bradley-Terry")
    d_only_steps: int = knob(10, "the first steps of warm-up train D only")
    adversarial_steps: int = knob(1600, "steps of the adversarial phase after warm-up (2 epochs in the paper)")
    alpha: float = knob(0.0, "weight of the teacher-CE term added to G's adversarial loss (0 = the paper)")
    kl_coef: float = knob(0.001, "k3 KL to the reference (the student at the end of warm-up); 0 = no reference")
    clip_ratio: float = knob(0.2, "PPO clip range; with one update per rollout the ratio is 1 and clipping is inactive")
    d_loss: str = knob("bt", "bt: Bradley-Terry (the paper); bce: binary cross-entropy (its ablation)")
    generator_warmup: bool = knob(True, "false: ablation without G warm-up (G idle until the adversarial phase)")
    discriminator_warmup: bool = knob(True, "false: ablation without D warm-up (D idle until the adversarial phase)")
    # The paper's off-policy ablation: after warm-up, D trains alone on the frozen student for off_policy_d_steps,
    # then D is frozen and G trains against it.
    off_policy: bool = knob(False, "true: the paper's off-policy ablation")
    off_policy_d_steps: int = knob(0, "length of the off-policy ablation's D-only stretch (only with off_policy)")
    # The rollout's prefill, and on the padded path D, G and the reference, run each prompt once per group, the
    # responses once per sample (exact to float rounding); row by row where a network trains with gradient
    # checkpointing or under FSDP, and for G and the reference where micro_batch_size < N.
    share_prompt: bool = knob(True, "run each prompt's forward once per group of samples (gad.prompt_sharing)")
    warmup_lr: Optional[float] = knob(
        None, "G's learning rate during warm-up (its CE updates); null = generator_optimizer.lr"
    )
    # Reward terms summed (weighted) into the policy's reward before the group normalisation (gad.rewards,
    # docs/extending.md); the discriminator's score is the term `discriminator`, weight 1 by default.
    rewards: dict[str, RewardTerm] = knob({}, "extra reward terms: name -> {_target_, weight}")
    discriminator_weight: float = knob(1.0, "the weight of the discriminator's score in the reward")
    discriminator_optimizer: OptimizerConfig = nested(OptimizerConfig, "D's optimizer (the paper's lr, constant)")
    discriminator_scheduler: SchedulerConfig = nested(SchedulerConfig, "D's LR schedule, in updates")
    discriminator_grad_clip: Optional[float] = knob(0.2, "max global grad norm of D (null: no clipping)")

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
        require(
            self.d_loss in DISCRIMINATOR_LOSS_NAMES,
            "d_loss",
            self.d_loss,
            f"must be one of {', '.join(DISCRIMINATOR_LOSS_NAMES)}",
        )
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
        require(
            finite(self.discriminator_weight),
            "discriminator_weight",
            self.discriminator_weight,
            "must be a finite number",
        )
        for name, term in self.rewards.items():
            require(
                bool(term._target_),
                f"rewards.{name}._target_",
                term._target_,
                "name the reward function (module.function)",
            )
        require(
            "discriminator" not in self.rewards,
            "rewards.discriminator",
            "...",
            "is the discriminator's own term: set method.discriminator_weight",
        )


@dataclass
class KDConfig(SamplingConfig):
    """`method=kd` (conf/method/kd.yaml): gad.methods.KDModule. Defaults: the second source document's."""

    target: ClassVar[str] = "gad.methods.KDModule"

    teacher: KDTeacherConfig = nested(
        KDTeacherConfig, "the teacher that gives probabilities; `kind` picks which keys are read"
    )
    steps: int = knob(2400, "training steps (batches of prompts; the same budget as SeqKD and GAD)")
    alpha: float = knob(0.5, "weight of CE on the teacher response; 1 - alpha weighs T^2 x KL (1: SeqKD, 0: pure KD)")
    alpha_warmup_steps: int = knob(240, "alpha ramps linearly from 0 at step 0 to its target here (0 = constant)")
    softening_temperature: float = knob(2.0, "T: both distributions are softened by it in the KL")
    on_policy: bool = knob(True, "true: KL on sequences sampled from the student; false: on the teacher responses")
    rollout_temperature: float = knob(1.0, "on-policy sampling temperature (1.0: the student's own distribution)")
    samples_per_prompt: int = knob(1, "on-policy samples per prompt")
    generator_optimizer: OptimizerConfig = nested(
        OptimizerConfig,
        "the document's lr range is 2e-5 .. 5e-5",
        lr=2.0e-5,
        weight_decay=0.01,
    )
    generator_scheduler: SchedulerConfig = nested(
        SchedulerConfig,
        "LR warm-up over 1.5% of `steps` (the document: 1-2%)",
        warmup_updates=36,
    )
    generator_grad_clip: Optional[float] = knob(1.0, "max global grad norm (null: no clipping)")

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
    """`method=seqkd` (conf/method/seqkd.yaml): gad.methods.SeqKDModule. Defaults: the paper's baseline."""

    target: ClassVar[str] = "gad.methods.SeqKDModule"

    steps: int = knob(2400, "training steps (the same budget as GAD's warm-up + adversarial phases)")
    generator_optimizer: OptimizerConfig = nested(OptimizerConfig, "the paper's SeqKD learning rate", lr=5.0e-6)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.steps >= 1, "steps", self.steps, "must be an integer >= 1")


@dataclass
class SnapshotConfig:
    """`method.snapshot`: how the one-time student responses are drawn (GAD's rollout sampling)."""

    temperature: float = knob(0.8, "sampling temperature of the snapshot (GAD's rollout temperature)")
    top_p: float = knob(1.0, "nucleus sampling of the snapshot (1.0 = off)")
    max_new_tokens: int = knob(1536, "length budget of a snapshot response (conf/method ties it to the data's)")
    batch_size: int = knob(64, "prompts per generate() call; part of the fingerprint (batches are seeded)")

    def __post_init__(self) -> None:
        require(self.temperature > 0 and finite(self.temperature), "temperature", self.temperature, "must be > 0")
        require(0 < self.top_p <= 1, "top_p", self.top_p, "must be in (0, 1]")
        require(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "must be an integer >= 1")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be an integer >= 1")


@dataclass
class SODAConfig(MethodConfig):
    """`method=soda` (conf/method/soda.yaml). Defaults: the paper's where its available text gives them, else
    the DPO defaults (gad/soda_losses.py)."""

    target: ClassVar[str] = "gad.methods.soda.SODAModule"

    steps: int = knob(2400, "training steps (batches of prompts; the same budget as SeqKD and GAD)")
    beta: float = knob(0.1, "DPO's beta: the scale of the log-ratio margin")
    nll_weight: float = knob(0.0, "weight of the chosen (teacher) responses' token-mean CE added to DPO (0: pure DPO)")
    snapshot: SnapshotConfig = nested(SnapshotConfig, "the one-time student snapshot's sampling")
    snapshot_cache: str = knob(".cache", "the snapshot goes to <this>/soda_snapshot/<fingerprint>.jsonl")
    generator_optimizer: OptimizerConfig = nested(OptimizerConfig, "TRL DPOConfig's learning rate", lr=1.0e-6)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.steps >= 1, "steps", self.steps, "must be an integer >= 1")
        require(self.beta > 0 and finite(self.beta), "beta", self.beta, "must be a finite number > 0")
        require(
            self.nll_weight >= 0 and finite(self.nll_weight), "nll_weight", self.nll_weight, "must be a number >= 0"
        )
        require(bool(self.snapshot_cache), "snapshot_cache", self.snapshot_cache, "must name a folder")
