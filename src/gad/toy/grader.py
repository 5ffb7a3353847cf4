"""A rule-based ROPD grader for the toy world: an OpenAI-compatible chat-completions server on 127.0.0.1.

`method=ropd` on the toy world (conf/method/ropd.yaml's `toy:`: `method.grader.toy_server: true`) starts one for
the run, so training goes through HTTP, the openai client and gad.ropd_grader exactly as with a real LLM grader,
offline. It answers the two prompts of gad.ropd_rubrics:

  Rubricator  a rubric of four criteria derived from the question (the toy task, solved by gad.toy.tasks; the
              first reference, label removed, when the question is not a toy task): the final answer is right
              (5 points), it has the right number of items (2), it is digits and spaces only (1), one line (1)
  Verifier    each response checked against each criterion it recognises (gad.toy.check for the first; a
              criterion it did not write is false)

    with ToyGrader() as grader:            # or .start() / .stop()
        grader.base_url                    # http://127.0.0.1:<port>/v1
    reply(messages)                        # the reply text itself, for tests that serve it otherwise
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gad.ropd_rubrics import RUBRIC_SCHEMA, VERDICT_SCHEMA
from gad.toy.check import check
from gad.toy.tasks import LABEL, solve

PATTERNS: list[tuple[str, str, Callable[[re.Match], dict]]] = [
    ("add", r"Add: (\d+) (\d+)", lambda m: {"a": int(m[1]), "b": int(m[2])}),
    ("reverse", r"Reverse: ([\d ]*\d)", lambda m: {"items": [int(x) for x in m[1].split()]}),
    ("sort", r"Sort: ([\d ]*\d)", lambda m: {"items": [int(x) for x in m[1].split()]}),
    ("max", r"Max: ([\d ]*\d)", lambda m: {"items": [int(x) for x in m[1].split()]}),
    ("count", r"Count ([a-z]) in ([a-z]+)", lambda m: {"char": m[1], "word": m[2]}),
]


def toy_answer(question: str) -> str | None:
    """The right answer to a toy question (its first toy task line), or None."""
    for task, pattern, args in PATTERNS:
        found = re.search(pattern, question)
        if found:
            return solve(task, args(found))
    return None


def _bare(response: str) -> str:
    text = response.strip()
    return text[len(LABEL) :].strip() if text.startswith(LABEL) else text


def criteria(answer: str) -> list[tuple[str, int, Callable[[str], bool]]]:
    """(criterion text, points, check) of the toy rubric for the right answer `answer`."""
    items = len(answer.split())
    return [
        (
            f"The response's final answer is exactly '{answer}', alone or after the label '{LABEL.strip()}'.",
            5,
            lambda r: check({"answer": answer}, r),
        ),
        (
            f"The response gives exactly {items} space-separated item(s), as the question asks.",
            2,
            lambda r: len(_bare(r).split()) == items,
        ),
        ("The response's answer uses digits and spaces only.", 1, lambda r: bool(re.fullmatch(r"[0-9 ]+", _bare(r)))),
        ("The response is a single non-empty line.", 1, lambda r: bool(r.strip()) and "\n" not in r.strip()),
    ]


def _section(text: str, tag: str) -> str | None:
    found = re.search(rf"<{tag}>\n(.*?)\n</{tag}>", text, flags=re.DOTALL)
    return found[1] if found else None


def _indexed(text: str, tag: str) -> list[str]:
    return [m[1] for m in re.finditer(rf'<{tag} index="\d+">\n(.*?)\n</{tag}>', text, flags=re.DOTALL)]


def reply(messages: list[dict]) -> str:
    """The grader's reply text to a Rubricator or Verifier conversation (gad.ropd_rubrics' prompts)."""
    text = str(messages[-1].get("content", "")) if messages else ""
    question = _section(text, "question") or ""
    if VERDICT_SCHEMA in text:
        rubric = json.loads(_section(text, "rubric") or "[]")
        answer = toy_answer(question)
        checks = {t: fn for t, _, fn in criteria(answer)} if answer is not None else {}
        answers = []
        for i, response in enumerate(_indexed(text, "response"), start=1):
            judgement = [bool(checks.get(c["criterion"], lambda r: False)(response)) for c in rubric]
            score = sum(c["points"] for c, v in zip(rubric, judgement) if v)
            answers.append({"answer_index": i, "judgement": judgement, "final_score": score})
        return json.dumps({"schema_version": VERDICT_SCHEMA, "answers": answers})
    if RUBRIC_SCHEMA in text:
        references = _indexed(text, "reference")
        answer = toy_answer(question) or (_bare(references[0]) if references else "")
        rubric = [
            {"criterion_id": f"c{i}", "category": category, "criterion": t, "points": points}
            for i, ((t, points, _), category) in enumerate(
                zip(
                    criteria(answer),
                    ["Task Fulfillment and Requirement Compliance"] * 2 + ["Observable Response Quality"] * 2,
                ),
                start=1,
            )
        ]
        total = sum(c["points"] for c in rubric)
        return json.dumps({"schema_version": RUBRIC_SCHEMA, "rubrics": rubric, "maximum_score": total})
    return "I grade ROPD rubric and verifier requests only."


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # quiet
        pass

    def _json(self, status: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
            return
        try:
            body = json.loads(raw)
            content = reply(body["messages"])
        except (ValueError, KeyError, TypeError) as err:
            self._json(
                400, {"error": {"message": f"bad request ({type(err).__name__})", "type": "invalid_request_error"}}
            )
            return
        self._json(
            200,
            {
                "id": "chatcmpl-toy",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model") or "toy-grader",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            },
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


class ToyGrader:
    """The server (see the module doc); a free port on 127.0.0.1."""

    def __init__(self) -> None:
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "toy grader not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> ToyGrader:
        if self._httpd is None:
            self._httpd = _Server(("127.0.0.1", 0), _Handler)
            threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ToyGrader:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
