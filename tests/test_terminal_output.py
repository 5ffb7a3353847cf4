"""Text from a server or a dump never reaches the terminal with control characters in it: an
error body carrying escape sequences (clear screen, window title, carriage return, bell), or a
dump id carrying them, is printed as plain text in the one `error:` line."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import assert_one_line_error, run_entry

from gad.errors import one_line, terminal_text

HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x1b[H\rkey rejected\x08\x9b31m \u202eevil"
CONTROL = [chr(c) for c in (*range(0x00, 0x20), *range(0x7F, 0xA0))] + ["\u202e"]


class _Hostile(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps(
            {"error": {"message": HOSTILE, "type": "invalid_request_error", "code": "invalid_api_key"}}
        ).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def hostile_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _clean(text: str) -> bool:
    return not any(c in text for c in CONTROL if c != "\n")


def test_server_error_body_is_stripped(tmp_path, hostile_server):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "a", "messages": [{"role": "user", "content": "hi"}]}) + "\n")
    proc = run_entry(
        "collect.py",
        f"prompts={prompts}",
        f"output={tmp_path}/out.jsonl",
        f"paths.log_dir={tmp_path}/logs",
        f"teacher.base_url={hostile_server}",
        "teacher.api_key_env=GAD_TERM_TEST_KEY",
        "progress=false",
        "teacher.max_retries=0",
        env={"GAD_TERM_TEST_KEY": "not-a-real-key"},
    )
    line = assert_one_line_error(proc, "401", "key rejected", "evil")
    assert _clean(proc.stdout) and _clean(proc.stderr), repr(line)


def test_dump_ids_in_errors_are_stripped(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    row = {"id": "x\x1b[2J\x1b]0;pwned\x07", "messages": [{"role": "user", "content": "hi"}]}
    prompts.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    proc = run_entry(
        "collect.py",
        f"prompts={prompts}",
        f"output={tmp_path}/out.jsonl",
        f"paths.log_dir={tmp_path}/logs",
        "teacher.api_key_env=GAD_TERM_TEST_KEY",
        "progress=false",
        env={"GAD_TERM_TEST_KEY": "k"},
    )
    assert_one_line_error(proc, "duplicate id", "pwned")
    assert _clean(proc.stdout) and _clean(proc.stderr), repr(proc.stderr)


def test_one_line_and_terminal_text_keep_printable_unicode():
    assert one_line(HOSTILE) == "]0;pwned [2J [H key rejected 31m evil"
    assert one_line("naïve 日本語 — ok\tnext\nline") == "naïve 日本語 — ok next line"
    assert terminal_text("a\x1b[2J\nb\tc\rd\x07") == "a[2J\nb\tcd"
