"""The async API layer shared by the teacher collector and the LLM-judge evaluation.

- `gad.api.client`: `ClientSettings`, `api_key_from_env`, `make_client` (one long-lived
  `AsyncOpenAI` with the openai client's own retry layer, tuned), `chat_completion`,
  `classify_error` (fatal / transient / permanent), `redact`, `protect_logs`.
- `gad.api.journal`: `Journal`, a durable append-only JSONL keyed by id with torn-line repair,
  resume and atomic compaction.
- `gad.api.runner`: `run_journaled` (bounded concurrency, rich progress, every outcome
  journaled), `Outcome`, `RunStats`, `pending_items`, `FatalRunError`.
- `gad.api.summary`: `summary_table` and `estimate_cost` for the end-of-run report.

Importing this package is cheap: the openai client is imported when a client is made.
"""

from gad.api.client import (
    ChatReply,
    ClientSettings,
    ErrorInfo,
    MalformedReply,
    api_key_from_env,
    chat_completion,
    classify_error,
    make_client,
    parse_chat_reply,
    protect_logs,
    redact,
)
from gad.api.journal import Journal
from gad.api.runner import FAILED, OK, REJECTED, FatalRunError, Outcome, RunStats, pending_items, run_journaled
from gad.api.summary import estimate_cost, summary_table

__all__ = [
    "ChatReply",
    "ClientSettings",
    "ErrorInfo",
    "FAILED",
    "FatalRunError",
    "Journal",
    "MalformedReply",
    "OK",
    "Outcome",
    "REJECTED",
    "RunStats",
    "api_key_from_env",
    "chat_completion",
    "classify_error",
    "estimate_cost",
    "make_client",
    "parse_chat_reply",
    "pending_items",
    "protect_logs",
    "redact",
    "run_journaled",
    "summary_table",
]
