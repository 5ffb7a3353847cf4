"""The async API layer shared by the teacher collector and the LLM-judge evaluation.

- `gad.api.settings`: `ClientSettings` (the connection keys of a teacher or judge config, typed)
  and `api_key_from_env` (the key from the environment variable the config names).
- `gad.api.client`: `make_client` (one long-lived `AsyncOpenAI` with the openai client's own
  retry layer, tuned) and `chat_completion`; `gad.api.reply`: `ChatReply`, `parse_chat_reply`.
- `gad.api.errors`: `classify_error` (fatal / transient / permanent), `ErrorInfo`.
- `gad.api.redaction`: `redact`, `protect_logs` (secrets out of messages and logs).
- `gad.api.journal`: `Journal`, a durable append-only JSONL keyed by id with torn-line repair,
  resume and atomic compaction.
- `gad.api.runner`: `run_journaled` (bounded concurrency, rich progress, every outcome
  journaled), `Outcome`, `RunStats`, `pending_items`, `FatalRunError`.
- `gad.api.summary`: `summary_table` and `estimate_cost` for the end-of-run report.

Importing this package is cheap: the openai client is imported when a client is made.
"""

from gad.api.client import chat_completion, make_client
from gad.api.errors import FATAL, PERMANENT, TRANSIENT, ErrorInfo, classify_error
from gad.api.journal import Journal
from gad.api.redaction import protect_logs, redact
from gad.api.reply import ChatReply, MalformedReply, parse_chat_reply
from gad.api.runner import FAILED, OK, REJECTED, FatalRunError, Outcome, RunStats, pending_items, run_journaled
from gad.api.settings import ClientSettings, api_key_from_env
from gad.api.summary import estimate_cost, summary_table

__all__ = [
    "ChatReply",
    "ClientSettings",
    "ErrorInfo",
    "FAILED",
    "FATAL",
    "FatalRunError",
    "Journal",
    "MalformedReply",
    "OK",
    "Outcome",
    "PERMANENT",
    "REJECTED",
    "RunStats",
    "TRANSIENT",
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
