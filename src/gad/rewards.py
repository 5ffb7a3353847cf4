"""Reward terms beside the discriminator's score: the seam of `method.rewards` (GAD; docs/extending.md).

The policy's reward for each sample is

    reward = method.discriminator_weight x D(sample) + sum over method.rewards of weight x term(sample)

summed before the group normalisation (gad.losses.group_advantages). A term is any callable named by
`_target_` ("module.function"):

    term(prompts: list[str], responses: list[str], metas: list[dict]) -> one float per response

called once per step on the step's samples (B prompts x N samples, prompt-major): the decoded prompt, the
decoded response (special tokens dropped) and the record's `meta` from the dump (the toy world's task and
answer: gad.toy.check.checker_reward is the worked example, `arm=verifier`). Each term's mean is logged as
`train/reward/<name>`. A term that raises, returns NaN or infinity, or returns the wrong number of values
stops the run with one line naming it.

A received run config names these functions too: loading a run never calls them (they are built when
training starts, not by gad.runs.load_module), and gad.trust refuses one the project's or a plugin folder's
conf/ does not name (gad.config.registry).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import get_object

from gad.config.method import RewardTerm
from gad.errors import GADError

RewardFn = Callable[[list[str], list[str], list[dict[str, Any]]], Sequence[float]]


@dataclass
class Term:
    name: str
    target: str
    fn: RewardFn
    weight: float


def build_terms(spec: Mapping[str, RewardTerm]) -> list[Term]:
    """The callables `method.rewards` names (imported now: a typo is one line before any step runs)."""
    terms = []
    for name, term in spec.items():
        try:
            fn = get_object(str(term._target_))
        except Exception as err:
            raise GADError(
                f"method.rewards.{name}._target_: cannot import '{term._target_}' ({type(err).__name__})"
            ) from None
        if not callable(fn):
            raise GADError(f"method.rewards.{name}._target_: '{term._target_}' is not callable")
        terms.append(Term(name, str(term._target_), fn, float(term.weight)))
    return terms


def evaluate(
    term: Term, prompts: list[str], responses: list[str], metas: list[dict[str, Any]], device: torch.device
) -> torch.Tensor:
    """One term's values [len(responses)], or a GADError naming it."""
    where = f"method.rewards.{term.name} ({term.target})"
    try:
        values = [float(v) for v in term.fn(prompts, responses, metas)]
    except GADError:
        raise
    except Exception as err:
        raise GADError(f"{where} raised {type(err).__name__}: {err}") from None
    if len(values) != len(responses):
        raise GADError(f"{where} returned {len(values)} values for {len(responses)} responses (one float each)")
    if not all(math.isfinite(v) for v in values):
        raise GADError(f"{where} returned a NaN or infinite value")
    return torch.tensor(values, dtype=torch.float32, device=device)
