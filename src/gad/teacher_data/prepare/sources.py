"""The four sources: where raw rows come from (`split_rows`, `check_hub`) and how one row becomes a
candidate prompt (`adapt`), with the source-level filters (malformed, language, flaw, moderation)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gad.errors import GADError
from gad.teacher_data.prepare.config import PrepareConfig

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
}


class Skip(Exception):
    """A row dropped by a filter; `args[0]` is the step name (one of STEPS)."""


@dataclass
class Candidate:
    id: str | None
    messages: list[dict[str, str]]
    response: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    norm: str = ""
    key: str = ""


def _sharegpt(turns: Any, field_name: str) -> list[dict[str, str]]:
    if not isinstance(turns, list) or not turns:
        raise Skip("malformed row", f"'{field_name}' is not a non-empty list")
    out = []
    for t in turns:
        if not isinstance(t, Mapping):
            raise Skip("malformed row", f"'{field_name}' has a turn that is not an object")
        if "from" in t:
            role, content = SHAREGPT_ROLES.get(str(t.get("from")).lower()), t.get("value")
        else:
            role, content = t.get("role"), t.get("content")
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise Skip("malformed row", f"'{field_name}' has a turn without a known role and string content")
        out.append({"role": role, "content": content})
    return out


def _cut(messages: list[dict[str, str]], turns: str) -> list[dict[str, str]]:
    """The prompt: up to the first user turn (turns=first) or the last one (turns=all)."""
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        raise Skip("no user turn")
    end = users[0] if turns == "first" else users[-1]
    return messages[: end + 1]


def _flagged(row: Mapping[str, Any], upto: int) -> bool:
    mod = row.get("openai_moderation")
    if isinstance(mod, Mapping):
        mod = [mod]
    if not isinstance(mod, list):
        return False
    return any(isinstance(m, Mapping) and bool(m.get("flagged")) for m in mod[:upto])


def adapt(row: Any, pc: PrepareConfig) -> Candidate:
    """One raw source row -> a candidate prompt, or `Skip(step)` for the source-level filters."""
    if not isinstance(row, Mapping):
        raise Skip("malformed row", "not an object")
    meta: dict[str, Any] = {"source": pc.source.kind}
    response = None
    if pc.source.kind in ("lmsys", "lmsys_clean"):
        conv = _sharegpt(row.get(pc.source.messages_field), pc.source.messages_field)
        system = row.get("system")  # ShareGPT-style rows may carry the system prompt beside the turns
        if isinstance(system, str) and system.strip() and conv[0]["role"] != "system":
            conv = [{"role": "system", "content": system}, *conv]
        lang = row.get("language")
        if (
            pc.filters.language
            and isinstance(lang, str)
            and lang.lower() not in {x.lower() for x in pc.filters.language}
        ):
            raise Skip("language")
        if (
            pc.source.kind == "lmsys_clean"
            and pc.filters.keep_flaws is not None
            and "flaw" in row
            and row.get("flaw") not in pc.filters.keep_flaws
        ):
            raise Skip("flaw")
        messages = _cut(conv, pc.filters.turns)
        if pc.filters.drop_flagged and _flagged(row, len(messages)):
            raise Skip("moderation flagged")
        for name in ("language", "model", "category"):
            if isinstance(row.get(name), str):
                meta[name] = row[name]
    else:
        if (
            pc.source.kind == "local"
            and pc.source.messages_field not in row
            and pc.source.prompt_field
            and pc.source.prompt_field in row
        ):
            text = row.get(pc.source.prompt_field)
            if not isinstance(text, str):
                raise Skip("malformed row", f"'{pc.source.prompt_field}' is not a string")
            messages = [{"role": "user", "content": text}]
        else:
            messages = _sharegpt(row.get(pc.source.messages_field), pc.source.messages_field)
        lang = row.get("language")
        if (
            pc.filters.language
            and isinstance(lang, str)
            and lang.lower() not in {x.lower() for x in pc.filters.language}
        ):
            raise Skip("language")
        if (
            pc.source.response_field
            and isinstance(row.get(pc.source.response_field), str)
            and row[pc.source.response_field].strip()
        ):
            response = row[pc.source.response_field]  # the response answers the whole context: no cut
            if messages[-1]["role"] != "user":
                raise Skip("malformed row", "messages must end with a user turn when a response is given")
        else:
            messages = _cut(messages, pc.filters.turns)
        if pc.filters.drop_flagged and (row.get("flagged") is True or _flagged(row, len(messages))):
            raise Skip("moderation flagged")
        if pc.source.kind == "gad_release":
            meta["teacher"] = "gpt-5-chat"
    rid = row.get(pc.source.id_field) if pc.source.id_field else None
    if isinstance(rid, int) and not isinstance(rid, bool):
        rid = str(rid)
    return Candidate(id=rid if isinstance(rid, str) and rid else None, messages=messages, response=response, meta=meta)


def split_rows(
    path: str, split: str, other_splits: tuple[str, ...] = (), named_only: bool = False
) -> Iterable[tuple[str, int, Any]]:
    """Raw rows of one split: a hub split, or locally the files named after the split (the hub
    layout `data/train-00000-of-00001.parquet`, or `test.jsonl`); unless `named_only`, a file or
    folder with no split in its names is the whole `split`."""
    from gad.data.records import dump_files, iter_raw_rows

    p = Path(path)
    if not p.exists():
        yield from iter_raw_rows(path, split)
        return
    if p.is_dir() and (p / "data").is_dir() and not any(f.is_file() for f in p.glob("*.parquet")):
        p = p / "data"  # a hub snapshot's root
    every = dump_files(p)
    named = [f for f in every if split_of(f.name, (split,))]
    files = named if (named or named_only) else [f for f in every if not split_of(f.name, other_splits)]
    for file in files:
        yield from iter_raw_rows(str(file), split)


def split_of(name: str, splits: tuple[str, ...]) -> bool:
    """Whether a file name belongs to one of `splits` (`train.jsonl`, `test-00000-of-00001.parquet`)."""
    return any(re.match(rf"^{re.escape(s)}(?:[-_.]|$)", name) for s in splits if s)


def check_hub(dataset_id: str, timeout_s: float = 3.0) -> None:
    """Fail at once, in one line, when a hub dataset cannot be reached (instead of ~20 s of retries)."""
    import socket
    from urllib.parse import urlparse

    hint = "download it elsewhere and pass the local copy as source.path"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") or os.environ.get(
        "HF_DATASETS_OFFLINE", ""
    ).lower() in ("1", "true", "yes", "on"):
        raise GADError(
            f"source.path '{dataset_id}' is a hub dataset id, but the Hugging Face hub is offline (HF_HUB_OFFLINE=1); {hint}"
        )
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as err:
        raise GADError(
            f"source.path '{dataset_id}' is a hub dataset id, but {host} is unreachable ({type(err).__name__}); {hint}"
        ) from None
