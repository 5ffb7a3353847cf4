"""Optimizer parameter groups and learning-rate schedules, built from config partials."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from hydra.utils import get_object
from torch import nn


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay matrices, never biases or norm weights (any parameter with < 2 dims)."""
    params = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _warmup_factor(
    update: int, warmup_updates: int, total_updates: int | None, first_updates: int, first_scale: float
) -> float:
    scale = first_scale if update < first_updates else 1.0
    if warmup_updates > 0 and update < warmup_updates:
        return scale * (update + 1) / warmup_updates
    if total_updates:  # linear decay to 0 after warm-up
        return scale * max(0.0, (total_updates - update) / max(1, total_updates - warmup_updates))
    return scale


def warmup_schedule(
    optimizer: torch.optim.Optimizer,
    warmup_updates: int = 0,
    total_updates: int | None = None,
    first_updates: int = 0,
    first_scale: float = 1.0,
):
    """Linear warm-up over `warmup_updates`, then constant (total_updates=None, the paper) or linear decay.

    Counted in updates: optimizer steps of this network (GAD updates G once per method step where G
    trains, so its updates lag its method steps by D's solo steps). "Step" always means a method step.
    The first `first_updates` updates run at `first_scale` x the rate (a method uses this for a phase with
    its own learning rate, e.g. GAD's warm-up); a pure function of the update count, so it resumes exactly.
    """
    factor = functools.partial(
        _warmup_factor,
        warmup_updates=warmup_updates,
        total_updates=total_updates,
        first_updates=first_updates,
        first_scale=first_scale,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def partial_of(config: Any) -> functools.partial:
    """A `_target_` + `_partial_` config dataclass (gad.config.method.OptimizerConfig, SchedulerConfig) as the
    partial it names: the target with the dataclass's other fields as keyword arguments."""
    return functools.partial(
        get_object(config._target_), **{k: v for k, v in asdict(config).items() if not k.startswith("_")}
    )


@dataclass
class NetworkOptim:
    """How one network is optimised: a config partial for the optimizer and the schedule, and clipping."""

    module: nn.Module
    optimizer: Callable[..., torch.optim.Optimizer]
    scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler]
    grad_clip: float | None

    def build(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        weight_decay = getattr(self.optimizer, "keywords", {}).get("weight_decay", 0.0)
        opt = self.optimizer(param_groups(self.module, weight_decay))
        return opt, self.scheduler(opt)
