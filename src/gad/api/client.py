"""One long-lived async OpenAI-compatible client with a single, tuned retry layer, and `chat_completion`.

Interface (shared by the teacher collector and the LLM-judge evaluation):

    settings = typed(TeacherConfig, cfg.teacher, "teacher")  # ClientSettings + the request keys (gad.api.settings)
    key = api_key_from_env(settings, "teacher")    # reads the env var NAMED in the config
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

After the retries are spent an exception reaches the caller; `classify_error` (gad.api.errors) says
whether it stops the run, can be tried again, or never will. Secrets stay out of messages and logs
through gad.api.redaction.
"""

from __future__ import annotations

import contextvars
import math
import random
from collections import Counter
from collections.abc import Mapping
from typing import Any

from gad.api.errors import is_quota_error
from gad.api.reply import ChatReply, parse_chat_reply
from gad.api.settings import ClientSettings

_RETRIES: contextvars.ContextVar[list[int]] = contextvars.ContextVar("gad_api_retries")


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
            if is_quota_error(response.status_code, body):
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


async def chat_completion(
    client: Any, *, model: str, messages: list[dict[str, str]], params: Mapping[str, Any] | None = None
) -> ChatReply:
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
