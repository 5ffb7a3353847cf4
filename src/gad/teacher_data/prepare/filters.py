"""The prompt-level filters, each counted per split: empty, redacted-only, duplicates, token limits."""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gad.errors import GADError
from gad.teacher_data.prepare.config import PrepareConfig
from gad.teacher_data.prepare.sources import Candidate, Skip, adapt

# the filter names, in pipeline order (the report lists them in this order)
STEPS = (
    "malformed row",
    "language",
    "moderation flagged",
    "flaw",
    "no user turn",
    "empty prompt",
    "redacted only",
    "duplicate (exact)",
    "duplicate (normalised)",
    "too few tokens",
    "too many tokens",
)


_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    """NFKC, case-folded, punctuation and spacing collapsed: the key for near-duplicates."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def prompt_text(messages: list[dict[str, str]]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def user_text(messages: list[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


class TokenCounter:
    """Prompt length in tokens: a transformers tokenizer (chat template if any) or `whitespace`."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.tok = None
        if spec == "whitespace":
            return
        from gad.remote_code import refuse_remote_code

        refuse_remote_code(spec, "filters.tokenizer")  # and trust_remote_code=False: never asked, never run
        try:
            from transformers import AutoTokenizer

            self.tok = AutoTokenizer.from_pretrained(spec, trust_remote_code=False)
        except Exception as err:  # OSError offline, ValueError for a bad folder, ...
            reason = " ".join(str(err).split())[:160]
            raise GADError(
                f"filters.tokenizer: cannot load tokenizer '{spec}' ({type(err).__name__}: {reason})"
            ) from None

    def count(self, batch: list[list[dict[str, str]]]) -> list[int]:
        if self.tok is None:
            return [sum(len(m["content"].split()) for m in msgs) for msgs in batch]
        if getattr(self.tok, "chat_template", None):
            texts = self.tok.apply_chat_template(batch, tokenize=False, add_generation_prompt=True)
            enc = self.tok(list(texts), add_special_tokens=False)["input_ids"]
        else:
            enc = self.tok([prompt_text(m) for m in batch])["input_ids"]
        return [len(ids) for ids in enc]


@dataclass
class SplitReport:
    """Counts for one input split: rows read, dropped by each step, kept."""

    name: str
    rows: int = 0
    dropped: Counter = field(default_factory=Counter)
    kept: int = 0
    examples: dict[str, str] = field(default_factory=dict)  # first malformed-row reason per step
    has_language: bool = False  # whether any row carried a language column


def _filter(
    rows: Iterable[tuple[str, int, Any]],
    pc: PrepareConfig,
    report: SplitReport,
    counter: TokenCounter | None,
    seen: dict[str, set],
) -> list[Candidate]:
    from gad.data.records import Columns, RowError, normalise_row

    check = Columns(id=None, messages="messages", response=None, teacher=None, meta=None)
    out: list[Candidate] = []
    for where, row_no, row in rows:
        report.rows += 1
        if not report.has_language and isinstance(row, Mapping) and isinstance(row.get("language"), str):
            report.has_language = True
        try:
            if isinstance(row, RowError):
                raise Skip("malformed row", str(row))
            cand = adapt(row, pc)
            try:  # the canonical validator: roles, string contents, ends with a user turn
                normalise_row({"messages": cand.messages}, check, row_no, require_response=False)
            except RowError as err:
                raise Skip("malformed row", str(err)) from None
            text = user_text(cand.messages)
            if pc.filters.drop_empty and not text.strip():
                raise Skip("empty prompt")
            if pc.filters.drop_redacted_only and not normalise(pc.filters.redaction.sub(" ", text)):
                raise Skip("redacted only")
            cand.norm = normalise(prompt_text(cand.messages))
            if pc.filters.dedup != "none":
                exact = json.dumps(cand.messages, ensure_ascii=False)
                if exact in seen["exact"]:
                    raise Skip("duplicate (exact)")
                seen["exact"].add(exact)
                if pc.filters.dedup == "normalised":
                    if cand.norm in seen["norm"]:
                        raise Skip("duplicate (normalised)")
                    seen["norm"].add(cand.norm)
        except Skip as skip:
            step = skip.args[0]
            report.dropped[step] += 1
            if len(skip.args) > 1 and step not in report.examples:
                report.examples[step] = f"{where} row {row_no}: {skip.args[1]}"
            continue
        out.append(cand)
    if counter is not None and (pc.filters.min_prompt_tokens is not None or pc.filters.max_prompt_tokens is not None):
        kept = []
        for start in range(0, len(out), 512):
            batch = out[start : start + 512]
            for cand, n in zip(batch, counter.count([c.messages for c in batch])):
                if pc.filters.min_prompt_tokens is not None and n < pc.filters.min_prompt_tokens:
                    report.dropped["too few tokens"] += 1
                elif pc.filters.max_prompt_tokens is not None and n > pc.filters.max_prompt_tokens:
                    report.dropped["too many tokens"] += 1
                else:
                    cand.meta["prompt_tokens"] = n
                    kept.append(cand)
        out = kept
    report.kept = len(out)
    return out
