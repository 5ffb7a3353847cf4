"""Early config validation: every problem is one line naming the key, before any model loads.

Two checks:
- unknown keys: every node with a `_target_` may only hold arguments its target accepts
  (a typo in an experiment file would otherwise be silently ignored);
- values: the rules below, applied to whichever of these keys the composed config has.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from gad.errors import GADError

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
INJECTED = {"student", "tokenizer", "callbacks", "logger", "lora"}  # passed by the training script, not the config


def _number(x): return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
def _count(x): return isinstance(x, int) and not isinstance(x, bool)  # 2.5 samples, 1.5 steps: not counts
def _positive(x): return _number(x) and x > 0
def _non_negative(x): return _number(x) and x >= 0
def _at_least(n): return lambda x: _count(x) and x >= n
def _count_from_0(x): return _count(x) and x >= 0
def _unit_interval(x): return _number(x) and 0 <= x <= 1
def _one_of(*options): return lambda x: x in options
def _boolean(x): return isinstance(x, bool)


RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "method.temperature": (_positive, "must be a finite number > 0"),
    "method.top_p": (lambda x: 0 < x <= 1, "must be in (0, 1]"),
    "method.alpha": (_unit_interval, "must be in [0, 1]"),
    "method.num_samples": (_at_least(2), "must be an integer >= 2 (advantages are normalised within each prompt's samples)"),
    "method.max_new_tokens": (_at_least(1), "must be an integer >= 1"),
    "method.warmup_steps": (_count_from_0, "must be an integer >= 0"),
    "method.d_only_steps": (_count_from_0, "must be an integer >= 0"),
    "method.adversarial_steps": (_count_from_0, "must be an integer >= 0"),
    "method.off_policy_d_steps": (_count_from_0, "must be an integer >= 0"),
    "method.steps": (_at_least(1), "must be an integer >= 1"),
    "method.kl_coef": (_non_negative, "must be a finite number >= 0"),
    "method.clip_ratio": (_positive, "must be a finite number > 0"),
    "method.d_loss": (_one_of("bt", "bce"), "must be 'bt' or 'bce'"),
    "method.micro_batch_size": (_at_least(1), "must be an integer >= 1"),
    "method.rollout_batch_size": (_at_least(1), "must be an integer >= 1"),
    "method.generator_optimizer.lr": (_positive, "must be a finite number > 0"),
    "method.warmup_lr": (_positive, "must be a finite number > 0 (or null: the same as generator_optimizer.lr)"),
    "method.discriminator_optimizer.lr": (_positive, "must be a finite number > 0"),
    "method.alpha_warmup_steps": (_count_from_0, "must be an integer >= 0"),
    "method.rollout_temperature": (_positive, "must be a finite number > 0"),
    "method.samples_per_prompt": (_at_least(1), "must be an integer >= 1"),
    "method.teacher.kind": (_one_of("local", "api"), "must be 'local' or 'api'"),
    "method.teacher.top_k": (_at_least(1), "must be an integer >= 1 (null: full distributions, local teachers only)"),
    "method.teacher.request_batch_size": (_at_least(1), "must be an integer >= 1"),
    "method.teacher.concurrency": (_at_least(1), "must be an integer >= 1"),
    "method.teacher.max_tokens": (_count_from_0, "must be an integer >= 0"),
    "model.lora.generator": (_boolean, "must be true or false"),
    "model.lora.discriminator": (_boolean, "must be true or false"),
    "model.lora.r": (_at_least(1), "must be an integer >= 1"),
    "model.lora.alpha": (_positive, "must be a finite number > 0"),
    "model.lora.dropout": (lambda x: 0 <= x < 1, "must be in [0, 1)"),
    "data.batch_size": (_at_least(1), "must be an integer >= 1"),
    "data.val_size": (_count_from_0, "must be an integer >= 0"),
    "data.max_prompt_tokens": (_at_least(1), "must be an integer >= 1"),
    "data.max_response_tokens": (_at_least(1), "must be an integer >= 1"),
    "data.truncation": (_one_of("left", "drop"), "must be 'left' or 'drop'"),
}


def _targets(node: Any, path: str) -> Iterator[tuple[str, DictConfig]]:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node:
            yield from _targets(node._get_node(key), f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            yield from _targets(item, f"{path}[{i}]")


def check_known_keys(cfg: DictConfig) -> None:
    for path, node in _targets(cfg, ""):
        if path.startswith("hydra"):
            continue
        target = node._get_node("_target_")._value()
        try:
            obj = get_object(target)
        except Exception:
            raise GADError(f"{path}._target_: cannot import '{target}'") from None
        params = inspect.signature(obj).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue
        for key in node:
            if key not in params and key not in HYDRA_KEYS and key not in INJECTED:
                known = ", ".join(sorted(k for k in params if k not in INJECTED | {"self"}))
                raise GADError(f"{path}.{key}: unknown key for {target} (known: {known})")


def check_values(cfg: DictConfig) -> None:
    for key, (ok, why) in RULES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        try:
            valid = ok(value)
        except TypeError:
            valid = False
        if not valid:
            raise GADError(f"{key}={value} is invalid: {why}")
    if "data" in cfg and not OmegaConf.select(cfg, "data.path", default=None):
        raise GADError("data.path: required, but not set (add data.path=<dump> to the command line)")
    method = cfg.get("method") or {}
    if "d_only_steps" in method and method.d_only_steps > method.warmup_steps:
        raise GADError(f"method.d_only_steps={method.d_only_steps} is invalid: must be <= method.warmup_steps={method.warmup_steps}")
    check_lora(cfg)
    strategy = str(OmegaConf.select(cfg, "trainer.strategy", default="auto"))
    if "deepspeed" in strategy.lower():
        raise GADError(
            f"trainer.strategy={strategy} is not supported: Lightning's DeepSpeed strategy allows one optimizer, "
            "and GAD steps two networks; use trainer=ddp"
        )


def check_lora(cfg: DictConfig) -> None:
    """`model.lora`: no unknown keys (it has no `_target_` to check them against), and peft
    installed when an adapter is switched on."""
    lora = OmegaConf.select(cfg, "model.lora", default=None)
    if not isinstance(lora, DictConfig):
        return
    from gad.models import LoraSettings, require_peft

    LoraSettings.parse(lora)  # an unknown key: one line naming it
    for network in ("generator", "discriminator"):
        if lora.get(network):
            require_peft(f"model.lora.{network}")


# ------------------------------------------------------------------- composition (toy vs real)
# The toy world's presets (conf/scale/toy_*.yaml: learning rates and step counts for a 1M-parameter
# student trained from scratch; the toy byte tokenizer) must never reach a pretrained student.
# conf/train.yaml already keys the scale on the model preset, and the tokenizer follows the student;
# what composition cannot see is a pretrained `name_or_path` set on model=tiny itself.


def check_composition(cfg: DictConfig) -> None:
    """Toy settings mixed into a pretrained student: one line, before any weights load."""
    student = OmegaConf.select(cfg, "model.student.name_or_path", default=None)
    if student is None:
        return
    preset = OmegaConf.select(cfg, "scale_preset", default=None)
    if preset is not None and str(preset).startswith("toy"):
        raise GADError(
            f"model.student.name_or_path={student}: the toy world's sizes (conf/scale/{preset}.yaml: learning "
            "rates and steps for the from-scratch toy student) would train this pretrained student; pick a model "
            "preset (e.g. model=smollm2-135m, model=qwen2.5-0.5b) or add conf/model/<name>.yaml for it"
        )
    tokenizer = OmegaConf.select(cfg, "model.tokenizer", default=None)
    if isinstance(tokenizer, DictConfig) and tokenizer.get("path") is not None and tokenizer.get("path") == tokenizer.get("from_scratch"):
        raise GADError(
            f"model.tokenizer.path={tokenizer.path} is the tokenizer of the from-scratch student, but the student is "
            f"pretrained ({student}); leave model.tokenizer.path null to use the student's own"
        )


def validate(cfg: DictConfig) -> None:
    """Raise `GADError` for the first problem found; resolves interpolations as a side check."""
    try:
        OmegaConf.resolve(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    except Exception as err:
        raise GADError(f"config does not resolve: {' '.join(str(err).split())}") from None
    check_known_keys(cfg)
    check_values(cfg)
    check_composition(cfg)
