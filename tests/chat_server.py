"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for tests and benchmarks.

    with ChatServer(latency=0.01, script={"p-0003": ["429", "ok"]}) as server:
        client = AsyncOpenAI(base_url=server.base_url, api_key="...")

* `POST /v1/chat/completions` and `GET /v1/models`, HTTP/1.1 keep-alive, TCP_NODELAY.
* Replies are deterministic, computed from the request: `reply_for(messages)`, or
  `reply_fn(messages)` when one is given (e.g. a deterministic judge for the evaluation tests).
* Faults are scripted per request. `script` maps a substring of the last user message to a list
  of faults, one per attempt (the first matching key wins; once the list is used up the reply is
  "ok"); `default` is the list for requests no key matches. `fault_fn(text, attempt)` may return
  a fault instead. Faults:
    ok             normal reply
    429            rate limited, with `retry-after-ms: <retry_after_ms>` (no header if None)
    quota          429 insufficient_quota (the run must stop)
    401            invalid API key
    400            invalid request (context length exceeded)
    500 / 502 / 503  server errors (with retry-after-ms too, when set)
    slow           sleep `slow_s` before answering (past the client's timeout)
    malformed      200 with a body that is not JSON
    drop           close the connection without answering
    refuse         a normal reply whose text is a refusal
    content_filter finish_reason "content_filter", no content
    length         finish_reason "length" (truncated)
    empty          a reply with empty content
* `api_key`: when set, a request without `Authorization: Bearer <api_key>` gets 401.
* Every request is logged in `server.requests` (`Request(time, path, text, attempt, fault,
  authorization, body)`); `max_in_flight` is the most requests it handled at once.

Run `python tests/chat_server.py --latency 0.05` for a standalone server (prints its URL).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "test-teacher"
REFUSAL_TEXT = "I'm sorry, but I can't help with that request."


def last_user_text(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content", ""))
    return ""


def reply_for(messages: list[dict]) -> str:
    """The deterministic answer to a conversation (what a perfect teacher 'would say')."""
    text = last_user_text(messages)
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:8]
    return f"Answer to: {text[:200]} [{digest}]"


@dataclass
class Request:
    time: float
    path: str
    text: str
    attempt: int
    fault: str
    authorization: str | None = None
    body: dict | None = None  # the decoded JSON request


class ChatServer:
    """See module doc. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        script: dict[str, list[str]] | None = None,
        default: list[str] | None = None,
        fault_fn: Callable[[str, int], str | None] | None = None,
        retry_after_ms: float | None = 50,
        slow_s: float = 1.0,
        api_key: str | None = None,
        model: str = MODEL,
        port: int = 0,
        log_requests: bool = True,
        reply_fn: Callable[[list[dict]], str] | None = None,
    ) -> None:
        self.latency = latency
        self.script = dict(script or {})
        self.default = list(default or [])
        self.fault_fn = fault_fn
        self.retry_after_ms = retry_after_ms
        self.slow_s = slow_s
        self.api_key = api_key
        self.model = model
        self.log_requests = log_requests
        self.reply_fn = reply_fn
        self.requests: list[Request] = []
        self.attempts: dict[str, int] = defaultdict(int)
        self.count = 0
        self.in_flight = 0
        self.max_in_flight = 0  # the most chat requests the server was handling at once
        self._lock = threading.Lock()
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------------------------- lifecycle
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ChatServer:
        handler = type("Handler", (_Handler,), {"chat": self})
        httpd = _Server(("127.0.0.1", self._port), handler)
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------- faults
    def choose_fault(self, text: str) -> tuple[str, int]:
        with self._lock:
            key = next((k for k in self.script if k in text), None)
            bucket = key if key is not None else f"\x00default\x00{text}"
            attempt = self.attempts[bucket]
            self.attempts[bucket] += 1
            self.count += 1
        if self.fault_fn is not None:
            fault = self.fault_fn(text, attempt)
            if fault:
                return fault, attempt
        plan = self.script[key] if key is not None else self.default
        return (plan[attempt] if attempt < len(plan) else "ok"), attempt

    def log(self, request: Request) -> None:
        if self.log_requests:
            with self._lock:
                self.requests.append(request)

    def requests_for(self, substring: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if substring in r.text]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the default backlog of 5 drops SYNs under 64 concurrent connects
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:  # a client that went away: not our business
        pass


class _Handler(BaseHTTPRequestHandler):
    chat: ChatServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args) -> None:  # quiet
        pass

    # ----------------------------------------------------------------------------------- utils
    def _send(
        self, status: int, body: bytes, headers: dict[str, str] | None = None, ctype: str = "application/json"
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: dict, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(
        self, status: int, message: str, type_: str, code: str | None, headers: dict[str, str] | None = None
    ) -> None:
        self._json(status, {"error": {"message": message, "type": type_, "param": None, "code": code}}, headers)

    def _retry_headers(self) -> dict[str, str]:
        ms = self.chat.retry_after_ms
        return {"retry-after-ms": str(ms)} if ms is not None else {}

    def _authorised(self) -> bool:
        key = self.chat.api_key
        return key is None or self.headers.get("Authorization") == f"Bearer {key}"

    # -------------------------------------------------------------------------------- handlers
    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._json(
                200, {"object": "list", "data": [{"id": self.chat.model, "object": "model", "owned_by": "test"}]}
            )
        else:
            self._error(404, f"no route {self.path}", "invalid_request_error", "not_found")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route {self.path}", "invalid_request_error", "not_found")
            return
        try:
            body = json.loads(raw)
            messages = body["messages"]
            text = last_user_text(messages)
        except (ValueError, KeyError, TypeError):
            self._error(400, "request body is not a chat completion request", "invalid_request_error", None)
            return
        fault, attempt = self.chat.choose_fault(text)
        auth = self.headers.get("Authorization")
        self.chat.log(Request(time.monotonic(), self.path, text, attempt, fault, auth, body))
        if not self._authorised():
            # like OpenAI, the error names the key it was given (OpenAI masks the middle; this echoes
            # it whole, so tests can check that the client side never repeats it)
            given = (auth or "").removeprefix("Bearer ")
            self._error(401, f"Incorrect API key provided: {given}.", "invalid_request_error", "invalid_api_key")
            return
        c = self.chat
        with c._lock:
            c.in_flight += 1
            c.max_in_flight = max(c.max_in_flight, c.in_flight)
        try:
            if fault == "slow":
                time.sleep(c.slow_s)
            elif c.latency > 0:
                time.sleep(c.latency)
            self._respond(fault, body, messages)
        finally:
            with c._lock:
                c.in_flight -= 1

    def _respond(self, fault: str, body: dict, messages: list[dict]) -> None:
        c = self.chat
        if fault == "429":
            self._error(
                429, "Rate limit reached for requests", "requests", "rate_limit_exceeded", self._retry_headers()
            )
        elif fault == "quota":
            self._error(
                429,
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                "insufficient_quota",
            )
        elif fault == "401":
            self._error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        elif fault == "400":
            self._error(
                400,
                "This model's maximum context length is 8192 tokens.",
                "invalid_request_error",
                "context_length_exceeded",
            )
        elif fault in ("500", "502", "503"):
            self._error(
                int(fault),
                "The server had an error while processing your request.",
                "server_error",
                None,
                self._retry_headers(),
            )
        elif fault == "malformed":
            self._send(200, b'{"id": "chatcmpl-broken", "choices": [ {"message": ')
        elif fault == "drop":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        else:
            content: str | None = (c.reply_fn or reply_for)(messages)
            finish = "stop"
            if fault == "refuse":
                content = REFUSAL_TEXT
            elif fault == "content_filter":
                content, finish = None, "content_filter"
            elif fault == "length":
                content, finish = content[: max(1, len(content) // 2)], "length"
            elif fault == "empty":
                content = ""
            prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
            self._json(
                200,
                {
                    "id": f"chatcmpl-{c.count}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model") or c.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content, "refusal": None},
                            "finish_reason": finish,
                            "logprobs": None,
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": len((content or "").split()),
                        "total_tokens": prompt_tokens + len((content or "").split()),
                    },
                },
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    args = parser.parse_args(argv)
    server = ChatServer(latency=args.latency, port=args.port, log_requests=False).start()
    print(server.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
