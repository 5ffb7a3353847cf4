"""The config of `python src/prepare.py`, typed: conf/prepare.yaml documents every key and its default."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from gad.config.typed import require, typed

KINDS = ("lmsys", "lmsys_clean", "gad_release", "local")
HUB_DEFAULTS = {
    "lmsys": "lmsys/lmsys-chat-1m",
    "lmsys_clean": "OpenLeecher/lmsys_chat_1m_clean",
    "gad_release": "ytz20/LMSYS-Chat-GPT-5-Chat-Response",
}
MESSAGES_FIELDS = {"lmsys": "conversation", "lmsys_clean": "conversations", "gad_release": "content"}
ID_FIELDS = {"lmsys": "conversation_id", "lmsys_clean": "id", "gad_release": None}
REDACTION = r"\b(?:NAME|EMAIL|PHONE|ADDRESS|URL|USER|ORGANIZATION|LOCATION)_\d+\b"
ENTRY_ONLY = ("paths", "hydra", "task_name")  # keys of the entry config that are not prepare's own


@dataclass
class SourceConfig:
    """`source`: what to read. The kind-dependent defaults (null in the YAML) are filled in here."""

    kind: str
    path: Optional[str]
    split: Optional[str]
    test_split: Optional[str]
    messages_field: Optional[str]
    prompt_field: Optional[str]
    id_field: Optional[str]
    response_field: Optional[str]

    def __post_init__(self) -> None:
        kind = self.kind
        require(kind in KINDS, "kind", kind, f"must be one of {', '.join(KINDS)}")
        path = self.path or HUB_DEFAULTS.get(kind)
        require(bool(path), "path", path, "must name a local file/folder (or a hub dataset id)")
        hub_id = path.count("/") == 1 and not path.endswith((".jsonl", ".json", ".parquet"))
        require(Path(path).exists() or hub_id, "path", path, "no such file or folder")
        self.path = path
        self.split = self.split or "train"
        self.test_split = self.test_split if (self.test_split and kind == "gad_release") else None
        self.messages_field = self.messages_field or MESSAGES_FIELDS.get(kind, "messages")
        self.id_field = self.id_field if kind == "local" else ID_FIELDS[kind]
        default_response = {"gad_release": "teacher_response", "local": "response"}.get(kind)
        self.response_field = self.response_field or default_response


@dataclass
class FiltersConfig:
    """`filters`: what to drop. `language` and `keep_flaws` take a string or a list of strings
    (normalised to a list); `redaction` is the compiled `redaction_pattern`."""

    language: Any
    turns: str
    drop_empty: bool
    drop_redacted_only: bool
    redaction_pattern: Optional[str]
    drop_flagged: bool
    keep_flaws: Any
    dedup: str
    tokenizer: Optional[str]
    min_prompt_tokens: Optional[int]
    max_prompt_tokens: Optional[int]

    def __post_init__(self) -> None:
        for name in ("language", "keep_flaws"):
            value = getattr(self, name)
            value = [value] if isinstance(value, str) else value
            ok = value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value))
            require(ok, name, value, "must be a string, a list of strings or null")
            setattr(self, name, value)
        require(self.turns in ("first", "all"), "turns", self.turns, "must be first or all")
        require(self.dedup in ("none", "exact", "normalised"), "dedup", self.dedup, "must be none, exact or normalised")
        low, high = self.min_prompt_tokens, self.max_prompt_tokens
        require(low is None or low >= 0, "min_prompt_tokens", low, "must be >= 0 (null = no limit)")
        require(high is None or high >= 1, "max_prompt_tokens", high, "must be >= 1 (null = no limit)")
        require(low is None or high is None or low <= high, "min_prompt_tokens", low, "must be <= max_prompt_tokens")
        require(
            bool(self.tokenizer) or not (low or high),
            "tokenizer",
            self.tokenizer,
            "must name a tokenizer (path or hub id) for min/max_prompt_tokens; "
            "filters.tokenizer=whitespace counts words instead",
        )
        self.tokenizer = self.tokenizer or None
        pattern = self.redaction_pattern or REDACTION
        try:
            self.redaction = re.compile(pattern)
        except re.error as err:
            require(False, "redaction_pattern", pattern, f"not a valid regular expression ({err})")

    @property
    def token_limits(self) -> bool:
        return self.min_prompt_tokens is not None or self.max_prompt_tokens is not None


@dataclass
class SampleConfig:
    """`sample`: how many prompts to keep, and the seed of the deterministic draw."""

    n: Optional[int]
    test_size: int
    seed: int

    def __post_init__(self) -> None:
        require(self.n is None or self.n >= 1, "n", self.n, "must be >= 1 (null = every prompt left)")
        require(self.test_size >= 0, "test_size", self.test_size, "must be >= 0")


@dataclass
class PrepareConfig:
    """conf/prepare.yaml, where every key and its default is documented. `out_path`: `out_dir` as a Path."""

    source: SourceConfig
    out_dir: str
    filters: FiltersConfig
    sample: SampleConfig

    def __post_init__(self) -> None:
        require(bool(self.out_dir), "out_dir", self.out_dir, "must name the output folder")
        self.out_path = Path(self.out_dir)


def config_from(cfg: Any) -> PrepareConfig:
    """conf/prepare.yaml's values, checked; each problem is one line naming its key."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    # the run folder's keys (paths, hydra: they only resolve inside a Hydra run) are not prepare's
    return typed(PrepareConfig, OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ENTRY_ONLY]), "")
