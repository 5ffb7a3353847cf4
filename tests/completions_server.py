"""A real OpenAI-compatible *completions* server on 127.0.0.1 that scores prompts with a local model.

    with CompletionsServer(model_dir) as server:
        client = OpenAI(base_url=server.base_url, api_key="x")
        client.completions.create(model=server.model_name, prompt=[[257, 117, 115]], echo=True,
                                  max_tokens=0, logprobs=5, extra_body={"return_tokens_as_token_ids": True})

It speaks the part of the protocol a KD teacher uses, as vLLM implements it:
* `POST /v1/completions` with `prompt` as text, a list of texts, token ids, or a list of id lists;
  `echo`, `logprobs` (k <= `max_logprobs`, else HTTP 400 as vLLM), `max_tokens` (0: only the
  echo; n: n greedy tokens appended), `return_tokens_as_token_ids` (tokens as "token_id:<id>").
* Echoed positions carry `top_logprobs`: the k most likely tokens and the token actually there
  (so k or k+1 entries), temperature 1, from the model's raw logits; the first position has
  None. Log-probs are the float32 model's values, sent as JSON floats (exact).
* `GET /v1/models` lists the one served model.
Text is tokenised with the server's own tokenizer (`tokenizer_dir`), which may differ from
the client's: that is how the tests check that a foreign tokenizer is refused.
Every request is counted in `server.requests`.

Run `python tests/completions_server.py MODEL_DIR` for a standalone server (prints its URL).
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


class CompletionsServer:
    def __init__(
        self,
        model_dir: str,
        tokenizer_dir: str | None = None,
        *,
        model_name: str = "test-teacher",
        max_logprobs: int = 20,
        port: int = 0,
    ):
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or model_dir)
        self.model_name, self.max_logprobs, self.port = model_name, max_logprobs, port
        self.requests = 0
        self.lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> CompletionsServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args):  # quiet
                pass

            def reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self.reply(
                        200,
                        {"object": "list", "data": [{"id": server.model_name, "object": "model", "owned_by": "test"}]},
                    )
                else:
                    self.reply(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.path.rstrip("/") != "/v1/completions":
                    return self.reply(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                with server.lock:
                    server.requests += 1
                try:
                    self.reply(200, server.complete(body))
                except ValueError as err:
                    self.reply(400, {"error": {"message": str(err), "type": "BadRequestError", "code": 400}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self) -> CompletionsServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ the completions protocol

    def prompts(self, prompt) -> list[list[int]]:
        if isinstance(prompt, str):
            prompt = [prompt]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt:
            raise ValueError("prompt must be a string, a list of strings, token ids or a list of token id lists")
        out = []
        for p in prompt:
            if isinstance(p, str):
                out.append(self.tokenizer(p, add_special_tokens=True)["input_ids"])
            elif isinstance(p, list) and p and all(isinstance(t, int) for t in p):
                out.append(p)
            else:
                raise ValueError("each prompt must be a non-empty string or list of token ids")
        return out

    def token(self, token_id: int, as_id: bool) -> str:
        return f"token_id:{token_id}" if as_id else self.tokenizer.decode([token_id])

    @torch.no_grad()
    def complete(self, body: dict) -> dict:
        if body.get("model") not in (None, self.model_name):
            raise ValueError(f"The model `{body.get('model')}` does not exist.")
        k = body.get("logprobs")
        if k is not None and k > self.max_logprobs:
            raise ValueError(
                f"Requested sample logprobs of {k}, which is greater than max allowed: {self.max_logprobs}"
            )
        max_tokens = int(body.get("max_tokens", 16))
        echo, as_id = bool(body.get("echo", False)), bool(body.get("return_tokens_as_token_ids", False))
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for index, ids in enumerate(self.prompts(body.get("prompt"))):
            if max(ids) >= self.model.config.vocab_size or min(ids) < 0:
                raise ValueError("token id out of vocabulary")
            seq = list(ids)
            with self.lock:  # one forward at a time; the model is shared by the handler threads
                for _ in range(max_tokens):  # greedy continuation, if asked for
                    logits = self.model(input_ids=torch.tensor([seq])).logits[0, -1]
                    seq.append(int(logits.argmax()))
                logp = torch.log_softmax(self.model(input_ids=torch.tensor([seq])).logits[0].float(), dim=-1)
            shown = range(0 if echo else len(ids), len(seq))
            tokens, token_lps, tops, offsets, text_len = [], [], [], [], 0
            for pos in shown:
                tid = seq[pos]
                tokens.append(self.token(tid, as_id))
                offsets.append(text_len)
                text_len += len(self.tokenizer.decode([tid]))
                if pos == 0:
                    token_lps.append(None)
                    tops.append(None)
                    continue
                row = logp[pos - 1]
                token_lps.append(max(float(row[tid]), -9999.0))
                if k is None:
                    continue
                top: dict[str, float] = {self.token(tid, as_id): max(float(row[tid]), -9999.0)}
                values, top_ids = row.topk(k) if k > 0 else (row[:0], row[:0].long())
                for v, i in zip(values.tolist(), top_ids.tolist()):
                    top[self.token(i, as_id)] = max(v, -9999.0)
                tops.append(top)
            text = self.tokenizer.decode([seq[p] for p in shown])
            choices.append(
                {
                    "index": index,
                    "text": text,
                    "finish_reason": "length",
                    "stop_reason": None,
                    "logprobs": None
                    if k is None
                    else {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets},
                }
            )
            prompt_tokens += len(ids)
            completion_tokens += len(seq) - len(ids)
        return {
            "id": f"cmpl-{time.monotonic_ns()}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-logprobs", type=int, default=20)
    args = parser.parse_args()
    server = CompletionsServer(args.model_dir, args.tokenizer, port=args.port, max_logprobs=args.max_logprobs).start()
    print(server.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
