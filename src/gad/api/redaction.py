"""Secrets out of every message and log line: `redact` one text, `protect_logs` for the whole process."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from gad.api.settings import KEYLIKE, PLACEHOLDER_KEY
from gad.errors import one_line


def redact(text: Any, secrets: Iterable[str] = ()) -> str:
    """`text` as one line with every secret and anything shaped like an API key replaced by `***`."""
    out = one_line(text)
    for secret in secrets:
        if secret and secret != PLACEHOLDER_KEY and len(secret) >= 4:
            out = out.replace(secret, "***")
    return KEYLIKE.sub("***", out)


class RedactingFilter(logging.Filter):
    """A logging filter that removes secrets from every record that passes a handler."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and s != PLACEHOLDER_KEY]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(s in message for s in self.secrets) or KEYLIKE.search(message):
            record.msg, record.args = redact(message, self.secrets), None
        return True


def protect_logs(secrets: Iterable[str]) -> None:
    """Install `RedactingFilter` on every root handler and quiet the per-request HTTP loggers.

    httpx/httpcore log one INFO line per request and openai one per retry; at thousands of
    requests per second that floods the log (the progress bar counts them instead).
    """
    filt = RedactingFilter(secrets)
    for handler in [*logging.getLogger().handlers, logging.lastResort]:
        if handler is not None and not any(
            isinstance(f, RedactingFilter) and f.secrets == filt.secrets for f in handler.filters
        ):
            handler.addFilter(filt)
    for name in ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "openai._base_client"):
        logging.getLogger(name).setLevel(logging.WARNING)
