"""What an exception from `chat_completion` means for a run, once the client's retries are spent.

`classify_error` sorts it into
  fatal      stop the whole run: rejected key (401), no permission (403), unknown model or wrong
             URL (404), exhausted quota / billing (429 insufficient_quota, 402)
  transient  could not get an answer this time: timeout, connection, rate_limited, server_error,
             malformed (a 2xx reply that is not a chat completion); a re-run tries again
  permanent  the server answered that this request is unacceptable: invalid_request (400/422),
             content_filter (a 400 from a content filter); re-sending it would not help
Every message is one line with the secret removed (`redact`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gad.api.redaction import redact
from gad.api.reply import MalformedReply


def is_quota_error(status: int, body: Any) -> bool:
    """A 429 (or 402) that means the account is out of credit, not a transient rate limit."""
    if status == 402:
        return True
    if status != 429:
        return False
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return "insufficient_quota" in str(body)
    if isinstance(body, Mapping):
        body = body.get("error", body)
    if isinstance(body, Mapping):
        fields = (body.get("code"), body.get("type"))
        return any(f in ("insufficient_quota", "billing_hard_limit_reached", "quota_exceeded") for f in fields)
    return False


FATAL, TRANSIENT, PERMANENT = "fatal", "transient", "permanent"


@dataclass(frozen=True)
class ErrorInfo:
    """What an exception means: `kind` (short label), `scope` (fatal|transient|permanent), `message`."""

    kind: str
    scope: str
    message: str

    @property
    def fatal(self) -> bool:
        return self.scope == FATAL


def _body_message(err: Any) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, Mapping):
        msg = body.get("message") or body.get("error") or ""
        if isinstance(msg, Mapping):
            msg = msg.get("message", "")
        if msg:
            return str(msg)
    return str(getattr(err, "message", "") or err)


_DROPPED = {
    "ServerDisconnectedError",
    "ClientOSError",
    "ConnectionResetError",
    "BrokenPipeError",
    "ConnectionRefusedError",
    "ClientConnectorError",
    "RemoteProtocolError",
    "ConnectError",
    "ReadError",
    "WriteError",
}


def _causes(exc: BaseException) -> list[BaseException]:
    out, seen = [], set()
    cur = exc.__cause__ or exc.__context__
    while cur is not None and id(cur) not in seen and len(out) < 10:
        seen.add(id(cur))
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def classify_error(exc: BaseException, secrets: Iterable[str] = (), where: str = "") -> ErrorInfo:
    """Sort an exception from `chat_completion` into fatal / transient / permanent (see module doc)."""
    import openai

    secrets = list(secrets)
    at = f" at {where}" if where else ""
    if isinstance(exc, MalformedReply):
        return ErrorInfo("malformed", TRANSIENT, redact(f"malformed reply: {exc}", secrets))
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        causes = _causes(exc)
        # the aiohttp transport reports a dropped connection as a (connect) timeout: look deeper
        dropped = next((c for c in causes if type(c).__name__ in _DROPPED), None)
        if isinstance(exc, openai.APITimeoutError) and dropped is None:
            return ErrorInfo("timeout", TRANSIENT, "request timed out (after all retries)")
        detail = type(dropped or (causes[-1] if causes else exc)).__name__
        return ErrorInfo("connection", TRANSIENT, redact(f"connection failed: {detail} (after all retries)", secrets))
    if isinstance(exc, openai.APIResponseValidationError):
        return ErrorInfo("malformed", TRANSIENT, redact(f"malformed reply: {exc.message}", secrets))
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        detail = redact(_body_message(exc), secrets)[:300]
        code = str(getattr(exc, "code", "") or "")
        if status == 401:
            return ErrorInfo("auth", FATAL, f"the server{at} rejected the API key (401: {detail})")
        if status == 403:
            return ErrorInfo("permission", FATAL, f"the API key has no access{at} (403: {detail})")
        if is_quota_error(status, exc.body if isinstance(exc.body, Mapping) else getattr(exc.response, "content", b"")):
            return ErrorInfo("quota", FATAL, f"quota exhausted{at}: {detail} (429 {code or 'insufficient_quota'})")
        if status == 404:
            return ErrorInfo("not_found", FATAL, f"not found{at} (404: {detail}); check the model name and base_url")
        if status == 429:
            return ErrorInfo("rate_limited", TRANSIENT, f"rate limited (429, after all retries): {detail}")
        if status >= 500 or status in (408, 409):
            return ErrorInfo("server_error", TRANSIENT, f"server error ({status}, after all retries): {detail}")
        if "content_filter" in code or "content_policy" in code or "content_filter" in detail.lower():
            return ErrorInfo("content_filter", PERMANENT, f"blocked by a content filter ({status}): {detail}")
        return ErrorInfo("invalid_request", PERMANENT, f"request rejected ({status}): {detail}")
    if isinstance(exc, openai.OpenAIError):
        return ErrorInfo("client_error", TRANSIENT, redact(f"{type(exc).__name__}: {exc}", secrets))
    raise exc
