"""Scoring student responses in the toy world: exact match up to surrounding whitespace, in either teacher's
style: the bare answer ("68", teacher toy-rules) or the labelled one ("Answer: 68", toy-rules-labelled)."""

from __future__ import annotations

from typing import Any

from gad.errors import GADError
from gad.toy.tasks import LABEL, solve


def check(meta: dict[str, Any], response: str | None) -> bool:
    """Exact-match correctness of a response in either teacher's style, ignoring only surrounding whitespace."""
    if not isinstance(response, str) or not isinstance(meta, dict):
        return False
    answer = meta.get("answer")
    if answer is None:
        if "task" not in meta or "args" not in meta:
            raise GADError("toy check: record meta has neither 'answer' nor 'task' and 'args' (not a toy record?)")
        answer = solve(meta["task"], meta["args"])
    given, answer = response.strip(), str(answer).strip()
    return given == answer or given == f"{LABEL}{answer}"


def accuracy(records: list[dict[str, Any]], responses: list[str | None]) -> float:
    """Fraction of `responses` that `check` accepts against the matching records' meta."""
    records, responses = list(records), list(responses)
    if len(records) != len(responses):
        raise GADError(f"accuracy: {len(records)} records but {len(responses)} responses")
    if not records:
        return 0.0
    return sum(check(r.get("meta") or {}, resp) for r, resp in zip(records, responses)) / len(records)


def checker_reward(prompts: list[str], responses: list[str], metas: list[dict[str, Any]]) -> list[float]:
    """A reward term (gad.rewards; `arm=verifier`): 1.0 for a response the toy checker accepts, else 0.0.
    The worked example of a verifier beside the discriminator (GAD + verifier)."""
    return [float(check(meta, response)) for meta, response in zip(metas, responses)]
