"""Optimizer parameter groups and learning-rate schedules, built from config partials."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay matrices, never biases or norm weights (any parameter with < 2 dims)."""
    params = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _warmup_factor(
    step: int, warmup_steps: int, total_steps: int | None, first_steps: int, first_scale: float
) -> float:
    scale = first_scale if step < first_steps else 1.0
    if warmup_steps > 0 and step < warmup_steps:
        return scale * (step + 1) / warmup_steps
    if total_steps:  # linear decay to 0 after warm-up
        return scale * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return scale


def warmup_schedule(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    first_steps: int = 0,
    first_scale: float = 1.0,
):
    """Linear warm-up over `warmup_steps`, then constant (total_steps=None, the paper) or linear decay.

    The first `first_steps` optimizer steps run at `first_scale` x the rate (a method uses this
    for a phase with its own learning rate, e.g. GAD's warm-up); counted in this optimizer's
    steps, the schedule stays a pure function of its step and so resumes exactly.
    """
    factor = functools.partial(
        _warmup_factor,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        first_steps=first_steps,
        first_scale=first_scale,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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
