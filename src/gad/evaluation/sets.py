"""Prompt sets: named dumps in the canonical format (gad.data.records), read once per evaluation.

`prompt_sets.<name>` is a path (file, folder or hub dataset id) or a mapping
{path, split, columns, limit}: `columns` maps canonical fields to source columns, as in the
data config (the released LMSYS test split: {id: null, messages: content, response: teacher_response}).
The teacher response is optional (prompts-only sets get no teacher-based metrics).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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


def load_set(name: str, spec: Any, limit: int | None = None) -> PromptSet:
    check_name("prompt_sets", name)
    if isinstance(spec, str):
        spec = {"path": spec}
    if not isinstance(spec, Mapping) or not spec.get("path"):
        raise GADError(f"prompt_sets.{name}: expected a path or {{path, split, columns, limit}}, got {spec!r}")
    unknown = set(spec) - {"path", "split", "columns", "limit"}
    if unknown:
        raise GADError(f"prompt_sets.{name}: unknown keys {sorted(unknown)} (use path, split, columns, limit)")
    columns = dict(spec.get("columns") or {})
    try:
        cols = Columns(**columns)
    except TypeError:
        raise GADError(f"prompt_sets.{name}.columns: only id, messages, response, teacher, meta") from None
    try:
        records, _ = read_records(
            str(spec["path"]), cols, split=str(spec.get("split") or "train"), require_response=False
        )
    except GADError as err:
        raise GADError(f"prompt_sets.{name}: {err}") from None
    cap = spec.get("limit", None)
    cap = limit if cap is None else cap
    if cap is not None:
        if not isinstance(cap, int) or cap < 1:
            raise GADError(f"prompt_sets.{name}.limit / limit must be a positive integer, got {cap!r}")
        records = records[:cap]
    return PromptSet(name, str(spec["path"]), records)
