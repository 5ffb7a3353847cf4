"""One long-lived async OpenAI-compatible client, and what its errors mean for a run.

Interface (shared by the teacher collector and the LLM-judge evaluation):

    settings = ClientSettings.from_config(cfg.teacher, prefix="teacher")  # validated, errors name the key
    key = api_key_from_env(settings)               # reads the env var NAMED in the config
    client = make_client(settings, key, concurrency=64)
    reply = await chat_completion(client, model=..., messages=[...], params={...})
    ...                                            # on an exception: classify_error(exc, secrets=[key])
    await client.close()

Retries: exactly one layer, the openai client's own (`max_retries`). It retries 408/409/429/5xx,
timeouts and dropped connections, and honours `retry-after-ms` / `Retry-After` (up to 120 s; a
longer server-directed wait is not retried). `GADAsyncOpenAI` only tunes that layer:
  * the exponential backoff (`backoff_initial_s` doubling up to `backoff_max_s`, minus up to 25%
    jitter) is configurable instead of the fixed 0.5 s .. 8 s, so tests can use tiny delays;
  * a 429 whose body says the quota is exhausted (`insufficient_quota`) is never retried: it can
    only fail again, and the run must stop at once;
  * every retry is counted by kind in `client.retry_counts` for the progress bar and summary.
Those three hooks override private methods of the openai client (`_calculate_retry_timeout`,
`_should_retry`, `_sleep_for_retry`); they are exercised by tests/test_collect.py against a real
HTTP server, so a change in the openai package shows up there first.

After the retries are spent an exception reaches the caller; `classify_error` sorts it into
  fatal      stop the whole run: rejected key (401), no permission (403), unknown model or wrong
             URL (404), exhausted quota / billing (429 insufficient_quota, 402)
  transient  could not get an answer this time: timeout, connection, rate_limited, server_error,
             malformed (a 2xx reply that is not a chat completion); a re-run tries again
  permanent  the server answered that this request is unacceptable: invalid_request (400/422),
             content_filter (a 400 from a content filter); re-sending it would not help
Every message is one line with the secret removed (`redact`).
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import logging
import math
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gad.errors import GADError, one_line

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
PLACEHOLDER_KEY = "EMPTY"  # what keyless local servers (vLLM without --api-key) are sent
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RETRIES: contextvars.ContextVar[list[int]] = contextvars.ContextVar("gad_api_retries")
_KEYLIKE = re.compile(r"\b(?:sk|rk|pk|key)-[A-Za-z0-9_\-*.]{4,}")


# --------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class ClientSettings:
    """How to reach one OpenAI-compatible endpoint. Holds the env var NAME, never the key."""

    base_url: str | None = None  # None: https://api.openai.com/v1 (or $OPENAI_BASE_URL)
    api_key_env: str = DEFAULT_KEY_ENV
    require_api_key: bool = True
    timeout_s: float = 300.0  # per attempt
    connect_timeout_s: float = 10.0
    max_retries: int = 6
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    http_backend: str = "aiohttp"  # aiohttp (half the CPU per request) or httpx (the SDK's default)
    config_prefix: str = ""  # where these settings live in the config ("teacher"), for messages

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], prefix: str = "teacher") -> ClientSettings:
        """Build from a config mapping (extra keys ignored); a bad value raises `GADError` naming `prefix.key`."""
        get = cfg.get
        base_url = get("base_url")
        if base_url is not None:
            base_url = str(base_url).strip()
            if not re.match(r"^https?://[^\s/]+", base_url):
                raise GADError(f"{prefix}.base_url must be an http(s) URL such as http://127.0.0.1:8000/v1")
        env = str(get("api_key_env", DEFAULT_KEY_ENV) or "")
        if _KEYLIKE.search(env) or (env and not _ENV_NAME.match(env)):
            # never echo the value: it may be the key itself
            raise GADError(f"{prefix}.api_key_env must be the NAME of an environment variable (like OPENAI_API_KEY), not a key")
        if not env:
            raise GADError(f"{prefix}.api_key_env must name an environment variable")
        settings = cls(
            base_url=base_url or None,
            api_key_env=env,
            require_api_key=bool(get("require_api_key", True)),
            timeout_s=_number(get("timeout_s", 300.0), f"{prefix}.timeout_s", low=0.0, strict=True),
            connect_timeout_s=_number(get("connect_timeout_s", 10.0), f"{prefix}.connect_timeout_s", low=0.0, strict=True),
            max_retries=int(_number(get("max_retries", 6), f"{prefix}.max_retries", low=0, integer=True)),
            backoff_initial_s=_number(get("backoff_initial_s", 0.5), f"{prefix}.backoff_initial_s", low=0.0),
            backoff_max_s=_number(get("backoff_max_s", 30.0), f"{prefix}.backoff_max_s", low=0.0),
        )
        backend = str(get("http_backend", "aiohttp"))
        if backend not in ("aiohttp", "httpx"):
            raise GADError(f"{prefix}.http_backend must be aiohttp or httpx, got {backend!r}")
        settings = dataclasses.replace(settings, http_backend=backend, config_prefix=prefix)
        if settings.backoff_max_s < settings.backoff_initial_s:
            raise GADError(f"{prefix}.backoff_max_s must be >= {prefix}.backoff_initial_s")
        return settings


def _number(value: Any, key: str, *, low: float | None = None, strict: bool = False, integer: bool = False) -> float:
    """A numeric config value, or `GADError` naming `key`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        kind = "an integer" if integer else "a number"
        raise GADError(f"{key} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise GADError(f"{key} must be finite, got {value!r}")
    if low is not None and (value <= low if strict else value < low):
        raise GADError(f"{key} must be {'>' if strict else '>='} {low:g}, got {value!r}")
    return value


def api_key_from_env(settings: ClientSettings) -> str:
    """The API key from the environment variable the settings name; `GADError` if it is required and unset."""
    key = os.environ.get(settings.api_key_env, "").strip()
    if key:
        return key
    if settings.require_api_key:
        at = f"{settings.config_prefix}." if settings.config_prefix else ""
        raise GADError(
            f"environment variable {settings.api_key_env} is not set: it must hold the API key "
            f"({at}api_key_env names the variable; {at}require_api_key=false for a keyless local server)"
        )
    return PLACEHOLDER_KEY


# ------------------------------------------------------------------------------------- redaction
def redact(text: Any, secrets: Iterable[str] = ()) -> str:
    """`text` as one line with every secret and anything shaped like an API key replaced by `***`."""
    out = one_line(text)
    for secret in secrets:
        if secret and secret != PLACEHOLDER_KEY and len(secret) >= 4:
            out = out.replace(secret, "***")
    return _KEYLIKE.sub("***", out)


class RedactingFilter(logging.Filter):
    """A logging filter that removes secrets from every record that passes a handler."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and s != PLACEHOLDER_KEY]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(s in message for s in self.secrets) or _KEYLIKE.search(message):
            record.msg, record.args = redact(message, self.secrets), None
        return True


def protect_logs(secrets: Iterable[str]) -> None:
    """Install `RedactingFilter` on every root handler and quiet the per-request HTTP loggers.

    httpx/httpcore log one INFO line per request and openai one per retry; at thousands of
    requests per second that floods the log (the progress bar counts them instead).
    """
    filt = RedactingFilter(secrets)
    for handler in [*logging.getLogger().handlers, logging.lastResort]:
        if handler is not None and not any(isinstance(f, RedactingFilter) and f.secrets == filt.secrets for f in handler.filters):
            handler.addFilter(filt)
    for name in ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "openai._base_client"):
        logging.getLogger(name).setLevel(logging.WARNING)


# ----------------------------------------------------------------------------------------- client
def _retry_kind(status: int | None) -> str:
    if status is None:
        return "network"  # a timeout or a dropped connection (the client does not say which)
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "server_error"
    if status == 408:
        return "timeout"
    return f"http_{status}"


def _is_quota_error(status: int, body: Any) -> bool:
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


def _openai() -> Any:
    import openai

    return openai


def make_client(settings: ClientSettings, api_key: str, *, concurrency: int) -> Any:
    """One `GADAsyncOpenAI` for the whole run, with a connection pool sized for `concurrency`.

    Close it with `await client.close()`.
    """
    openai = _openai()
    import httpx2

    class GADAsyncOpenAI(openai.AsyncOpenAI):
        """`AsyncOpenAI` whose single retry layer has a configurable backoff and counts retries."""

        def __init__(self, *, backoff_initial_s: float, backoff_max_s: float, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.backoff_initial_s = backoff_initial_s
            self.backoff_max_s = backoff_max_s
            self.retry_counts: Counter[str] = Counter()

        def _calculate_retry_timeout(self, remaining_retries: int, options: Any, response_headers: Any = None) -> float:
            retry_after = self._parse_retry_after_header(response_headers)
            if retry_after is not None and math.isfinite(retry_after) and 0 < retry_after <= 120:
                return retry_after  # the server said how long: honour it
            max_retries = options.get_max_retries(self.max_retries)
            attempt = min(max_retries - remaining_retries, 60)
            delay = min(self.backoff_initial_s * 2.0**attempt, self.backoff_max_s)
            return max(delay * (1 - 0.25 * random.random()), 0.0)

        def _should_retry(self, response: Any) -> bool:
            try:
                body = response.content
            except Exception:  # a streamed body that was not read: no way to tell, use the default rule
                body = b""
            if _is_quota_error(response.status_code, body):
                return False
            return super()._should_retry(response)

        async def _sleep_for_retry(self, *, retries_taken: int, max_retries: int, options: Any, response: Any) -> None:
            self.retry_counts[_retry_kind(response.status_code if response is not None else None)] += 1
            _RETRIES.get([0])[0] += 1  # per-request count, read back by chat_completion
            await super()._sleep_for_retry(
                retries_taken=retries_taken, max_retries=max_retries, options=options, response=response
            )

    timeout = httpx2.Timeout(settings.timeout_s, connect=settings.connect_timeout_s)
    limits = httpx2.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    http_client = None
    if settings.http_backend == "aiohttp":
        try:
            import aiohttp  # noqa: F401  (openai's optional transport; comes with datasets)

            http_client = openai.DefaultAioHttpClient(timeout=timeout, limits=limits)
        except (ImportError, RuntimeError):
            http_client = None  # fall back to httpx
    if http_client is None:
        http_client = openai.DefaultAsyncHttpxClient(timeout=timeout, limits=limits)
    return GADAsyncOpenAI(
        api_key=api_key,
        base_url=settings.base_url,
        timeout=timeout,
        max_retries=settings.max_retries,
        http_client=http_client,
        backoff_initial_s=settings.backoff_initial_s,
        backoff_max_s=settings.backoff_max_s,
    )


# ------------------------------------------------------------------------------------ completions
@dataclass
class ChatReply:
    """The parts of a chat completion the tools use. `raw` keeps the decoded JSON."""

    text: str | None
    finish_reason: str | None
    refusal: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str | None = None
    retries: int = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


class MalformedReply(Exception):
    """A 2xx reply that is not a usable chat completion; `str()` says what is wrong."""


def parse_chat_reply(text: str) -> ChatReply:
    """Decode a chat-completions body by hand, so a malformed one is named rather than half-parsed."""
    try:
        data = json.loads(text)
    except (ValueError, TypeError) as err:
        raise MalformedReply(f"reply is not JSON ({one_line(err)[:80]})") from None
    if not isinstance(data, dict):
        raise MalformedReply("reply is not a JSON object")
    if "error" in data and "choices" not in data:
        raise MalformedReply(f"reply carries an error: {one_line(data['error'])[:200]}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedReply("reply has no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise MalformedReply("reply's first choice has no message")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise MalformedReply("reply's message content is not a string")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}

    def count(name: str) -> int:
        value = usage.get(name)
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0

    refusal = message.get("refusal")
    return ChatReply(
        text=content,
        finish_reason=choices[0].get("finish_reason") if isinstance(choices[0].get("finish_reason"), str) else None,
        refusal=refusal if isinstance(refusal, str) and refusal.strip() else None,
        prompt_tokens=count("prompt_tokens"),
        completion_tokens=count("completion_tokens"),
        model=data.get("model") if isinstance(data.get("model"), str) else None,
        raw=data,
    )


async def chat_completion(client: Any, *, model: str, messages: list[dict[str, str]], params: Mapping[str, Any] | None = None) -> ChatReply:
    """One chat completion (POST /chat/completions) through the client's retry layer.

    `params` holds the request fields besides model and messages (temperature, top_p,
    max_tokens or max_completion_tokens, seed, ...); the items of a key `extra_body` are merged
    into the request for server-specific fields (vLLM's top_k, ...). Raises the openai
    exceptions, or `MalformedReply`.

    The body is posted as plain JSON with the client's own `post` (the SDK's documented way to
    make custom requests: same auth, timeouts and retry layer). `client.chat.completions.create`
    would first run its typed transformation over every message, which costs about 1 ms of CPU
    per request: a third of the client's time, and the limit on one process's throughput.
    """
    import httpx2

    body: dict[str, Any] = {"model": model, "messages": messages}
    params = dict(params or {})
    extra_body = params.pop("extra_body", None) or {}
    body.update({k: v for k, v in params.items() if v is not None})
    body.update(extra_body)
    counter = [0]
    token = _RETRIES.set(counter)
    try:
        response = await client.post("/chat/completions", cast_to=httpx2.Response, body=body)
        reply = parse_chat_reply(response.text)
    except Exception as exc:
        exc.gad_retries = counter[0]  # type: ignore[attr-defined]  # retries spent before giving up
        raise
    finally:
        _RETRIES.reset(token)
    reply.retries = counter[0]
    return reply


# ---------------------------------------------------------------------------------------- errors
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
    "ServerDisconnectedError", "ClientOSError", "ConnectionResetError", "BrokenPipeError", "ConnectionRefusedError",
    "ClientConnectorError", "RemoteProtocolError", "ConnectError", "ReadError", "WriteError",
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
    openai = _openai()
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
        if _is_quota_error(status, exc.body if isinstance(exc.body, Mapping) else getattr(exc.response, "content", b"")):
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
