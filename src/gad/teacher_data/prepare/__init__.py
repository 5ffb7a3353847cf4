"""Prompt sets for distillation: read a source, filter, sample a train and a held-out test split.

`prepare(cfg)` is the body of `python src/prepare.py` (config: conf/prepare.yaml). It writes
`<out_dir>/train.jsonl` and `<out_dir>/test.jsonl` as canonical records (prompts only, unless the
source carries teacher responses) and prints a table with the count of every filter.

Sources (`source.kind`; `source.path` is a hub id or a local file/folder in the same schema):
  lmsys        lmsys/lmsys-chat-1m (gated): conversation_id, model, conversation [{content, role}],
               turn, language, openai_moderation [{categories, category_scores, flagged}], redacted
  lmsys_clean  OpenLeecher/lmsys_chat_1m_clean (English only): id, conversations
               [{from: human|gpt|system, value}], category, flaw, optional system (ShareGPT style)
  gad_release  ytz20/LMSYS-Chat-GPT-5-Chat-Response: content [{role, content}], teacher_response;
               splits train and test. Imported with its responses, its own test split kept.
  local        any JSONL/Parquet of prompts: a `messages` list, or a plain-text `prompt` column,
               optional `id` (field names configurable), optional `response`

Filters, in this order, each configurable and counted:
  malformed rows (not in the source's schema) · language (where the source has it) ·
  moderation-flagged (lmsys: openai_moderation of the kept turns; lmsys_clean: `flaw` not in
  filters.keep_flaws) · first user turn only or whole context (filters.turns) · empty prompts ·
  redacted-only prompts (nothing left once placeholders like NAME_1 are removed) · exact
  duplicates · normalised-text duplicates (NFKC, case-folded, punctuation and spacing ignored) ·
  min/max prompt tokens (a transformers tokenizer, with the chat template when it has one).

Sampling is deterministic: every kept prompt gets the key sha256(seed, normalised text); the
lowest keys form the test split, the next `sample.n` the train split. Re-runs with the same seed
give the same files; a larger `n` only adds prompts; no prompt (by normalised text) is in both.
For gad_release the release's own test split is the test split (sample.test_size caps it).

Modules by stage: `config` (the typed config), `sources` (reading, one adapter per kind),
`filters`, `sample` (the draw, records), `report` (the table).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gad.errors import GADError
from gad.teacher_data.prepare.config import KINDS, PrepareConfig, config_from
from gad.teacher_data.prepare.filters import STEPS, TokenCounter, normalise, prompt_text, user_text
from gad.teacher_data.prepare.report import report_table
from gad.teacher_data.prepare.sample import PrepareResult, run_prepare
from gad.teacher_data.prepare.sources import adapt, check_hub, split_rows

__all__ = [
    "KINDS",
    "main",
    "STEPS",
    "PrepareConfig",
    "PrepareResult",
    "TokenCounter",
    "adapt",
    "check_hub",
    "config_from",
    "normalise",
    "prepare",
    "prompt_text",
    "report_table",
    "run_prepare",
    "split_rows",
    "user_text",
]


def prepare(cfg: Any) -> PrepareResult:
    """Run `python src/prepare.py`: write <out_dir>/train.jsonl and test.jsonl, print the report."""
    from rich.console import Console

    pc = config_from(cfg)
    if not Path(pc.source.path).exists():
        check_hub(pc.source.path)
    from gad.data.records import write_jsonl  # importing gad.data is slow: after the checks

    result = run_prepare(pc)
    console = Console()
    console.print(report_table(pc, result))
    for step, example in sorted(next(iter([r.examples for r in result.reports]), {}).items()):
        console.print(f"  first '{step}': {example}")
    if not result.train and not result.test:
        raise GADError(f"{pc.source.path}: no prompt survived the filters (see the table above)")
    pc.out_path.mkdir(parents=True, exist_ok=True)
    for name, records in (("train", result.train), ("test", result.test)):
        tmp = pc.out_path / f".{name}.jsonl.tmp"
        write_jsonl(records, tmp)
        os.replace(tmp, pc.out_path / f"{name}.jsonl")
    console.print(
        f"wrote {pc.out_path / 'train.jsonl'} ({len(result.train):,}) and {pc.out_path / 'test.jsonl'} ({len(result.test):,})"
    )
    return result


def main(cfg: Any) -> int:
    """The body of `python src/prepare.py`: `prepare`, then exit status 0 (the result object is for
    Python callers; an entry body returns an exit status)."""
    prepare(cfg)
    return 0
