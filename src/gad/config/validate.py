"""The composed training config, validated once: every problem is one line naming the key, before
any model loads.

- `method`, `data` and `model.lora` become their typed definitions (gad.config.method, .data,
  .model): types, unknown keys, ranges and each concern's cross-field rules;
- every other node with a `_target_` may only hold arguments its target accepts (a typo in an
  experiment file would otherwise be silently ignored);
- the rules across concerns (`check_across`, `check_composition`).

The typed concerns and the rules across them import nothing heavy, so a mistake there is reported
before torch is imported; the `_target_` check comes last, as it imports its targets (Lightning, torch).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from gad.config.bounds import check_step_tokens
from gad.config.data import DataConfig
from gad.config.model import LoraConfig
from gad.config.registry import config_class
from gad.config.typed import typed
from gad.errors import GADError

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
INJECTED = {"student", "tokenizer", "callbacks", "logger", "lora"}  # passed by the training script, not the config


def _targets(node: Any, path: str) -> Iterator[tuple[str, DictConfig]]:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node:
            yield from _targets(node._get_node(key), f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            yield from _targets(item, f"{path}[{i}]")


def typed_roots(cfg: DictConfig) -> set[str]:
    """Top-level nodes checked against a dataclass (check_concerns), which knows every key."""
    method = cfg.get("method")
    return {"data"} | ({"method"} if method is not None and method.get("_target_") else set())


def check_known_keys(cfg: DictConfig, roots: tuple[str, ...] | None = None) -> None:
    """Every `_target_` node (under `roots`, if given) holds only arguments its target accepts."""
    for path, node in _targets(cfg, ""):
        if path.startswith("hydra") or path.split(".")[0] in typed_roots(cfg):
            continue
        if roots is not None and path.split(".")[0] not in roots:
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


def check_concerns(cfg: DictConfig) -> None:
    """`method`, `data` and `model.lora` against their dataclasses."""
    method = cfg.get("method")
    if method is not None and method.get("_target_"):
        typed(config_class(str(method._target_)), method, "method")
    if cfg.get("data") is not None:
        typed(DataConfig, cfg.data, "data")
    lora = OmegaConf.select(cfg, "model.lora", default=None)
    if lora is not None:
        lora = typed(LoraConfig, lora, "model.lora")
        for network in ("generator", "discriminator"):
            if getattr(lora, network):
                from gad.models import require_peft  # torch and transformers: only when LoRA is on

                require_peft(f"model.lora.{network}")


def check_across(cfg: DictConfig) -> None:
    """Rules that involve more than one concern."""
    strategy = str(OmegaConf.select(cfg, "trainer.strategy", default="auto"))
    if "deepspeed" in strategy.lower():
        raise GADError(
            f"trainer.strategy={strategy} is not supported: Lightning's DeepSpeed strategy allows one optimizer, "
            "and GAD steps two networks; use trainer=ddp"
        )


# ------------------------------------------------------------------- composition (toy vs real)
# The toy world's sizes (conf/scale/tiny_toy.yaml and each method's `toy:`: learning rates and step counts for a
# 1M-parameter student trained from scratch; the toy byte tokenizer) must never reach a pretrained student, and a
# method without toy sizes must not run its paper-scale steps on the toy student. conf/train.yaml already keys the
# scale on the model preset, and the tokenizer follows the student; what composition cannot see is a pretrained
# `name_or_path` set on model=tiny itself.


def check_composition(cfg: DictConfig) -> None:
    """Toy settings mixed into a pretrained student, or a method without toy sizes on the toy world: one line,
    before any weights load."""
    preset = OmegaConf.select(cfg, "scale_preset", default=None)
    method = cfg.get("method")
    if preset == "toy" and method is not None and method.get("_target_") and not method.get("toy"):
        raise GADError(
            f"method.toy: {method._target_} has no toy sizes, and its defaults (paper-scale steps) would train "
            "the toy student; give its conf/method/<name>.yaml a `toy:` mapping (docs/extending.md)"
        )
    student = OmegaConf.select(cfg, "model.student.name_or_path", default=None)
    if student is None:
        return
    if preset is not None and str(preset).startswith("toy"):
        raise GADError(
            f"model.student.name_or_path={student}: the toy world's sizes (conf/scale/tiny_toy.yaml and the method's "
            "`toy:`: learning rates and steps for the from-scratch toy student) would train this pretrained student; "
            "pick a model preset (e.g. model=smollm2-135m, model=qwen2.5-0.5b) or add conf/model/<name>.yaml for it"
        )
    tokenizer = OmegaConf.select(cfg, "model.tokenizer", default=None)
    if (
        isinstance(tokenizer, DictConfig)
        and tokenizer.get("path") is not None
        and tokenizer.get("path") == tokenizer.get("from_scratch")
    ):
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
    check_concerns(cfg)
    check_step_tokens(cfg)  # a step's sequences fit this machine (gad/config/bounds.py)
    check_across(cfg)
    check_composition(cfg)
    check_known_keys(cfg)


def validate_received(cfg: DictConfig, file: str) -> None:
    """A saved run config read back (gad.runs.run_config), checked as a training config is before
    anything in it is built: its typed concerns, and the arguments of the targets that loading a run
    calls (only those: gad.trust has already refused any target that is not the project's own)."""
    from gad.trust import RECEIVED_SECTIONS

    try:
        check_concerns(cfg)
        check_known_keys(cfg, roots=RECEIVED_SECTIONS)
    except GADError as err:
        raise GADError(f"{file}: {err}") from None
