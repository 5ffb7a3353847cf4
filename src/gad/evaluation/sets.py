"""Prompt sets: named dumps in the canonical format (gad.data.records), read once per evaluation.

`prompt_sets.<name>` is a path (file, folder or hub dataset id) or a mapping
{path, split, columns, limit}: `columns` maps canonical fields to source columns, as in the
data config (the released LMSYS test split: {id: null, messages: content, response: teacher_response}).
The teacher response is optional (prompts-only sets get no teacher-based metrics).
A several-teacher dump (one record per (id, teacher): gad.teachers) is evaluated once per prompt: the id's
first record in the file is kept, its teacher's response the one teacher-based metrics use; `limit` counts prompts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

from gad.config.typed import require, typed
from gad.data.records import Columns, read_records
from gad.errors import GADError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class PromptSet:
    name: str
    source: str
    records: list[dict[str, Any]]

    @property
    def has_teacher(self) -> bool:
        return any("response" in r for r in self.records)


def check_name(kind: str, name: str) -> str:
    if not NAME.match(str(name)):
        raise GADError(f"{kind}.{name}: names may hold letters, digits, '_', '.', '-' only (they become file names)")
    return str(name)


@dataclass
class PromptSetSpec:
    """`prompt_sets.<name>` written as a mapping (a bare string is its `path`)."""

    path: str
    split: str = "train"
    columns: Columns = field(default_factory=Columns)
    limit: Optional[int] = None  # the first rows only (null: the entry config's `limit`)

    def __post_init__(self) -> None:
        require(bool(self.path), "path", self.path, "a file, folder or hub dataset id is required")
        require(self.limit is None or self.limit >= 1, "limit", self.limit, "must be null or an integer >= 1")


def one_per_prompt(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first record of each id, in the file's order (a several-teacher dump's other teachers dropped)."""
    first: dict[str, dict[str, Any]] = {}
    for record in records:
        first.setdefault(record["id"], record)
    return list(first.values())


def load_set(name: str, spec: Any, limit: int | None = None) -> PromptSet:
    check_name("prompt_sets", name)
    spec = typed(PromptSetSpec, {"path": spec} if isinstance(spec, str) else spec, f"prompt_sets.{name}")
    try:
        records, _ = read_records(spec.path, spec.columns, split=spec.split, require_response=False)
    except GADError as err:
        raise GADError(f"prompt_sets.{name}: {err}") from None
    records = one_per_prompt(records)
    cap = limit if spec.limit is None else spec.limit  # `limit` (checked by gad.evaluation.config.check)
    return PromptSet(name, spec.path, records[:cap] if cap is not None else records)
