"""A teacher behind an OpenAI-compatible completions endpoint that returns prompt log-probs (vLLM).

Each sequence to score is sent as token ids with `echo=true, max_tokens=0, logprobs=k`: the
server echoes the prompt with, at every position but the first, the log-probs of its k most
likely next tokens and of the token actually there (`choices[i].logprobs.top_logprobs`, a
list of {token: logprob}). With vLLM's `return_tokens_as_token_ids` those tokens come back as
"token_id:<id>", so nothing depends on decoding token strings (byte-level tokens that are not
valid UTF-8 on their own all decode to the same string). Without it, token strings are mapped
back to ids through the student's tokenizer, refusing any string that several ids decode to.

The tokenizer check: the server tokenises a probe text (a chat-templated conversation with
words, digits, code, whitespace and non-ASCII text) and must produce exactly the ids the
student's tokenizer does; otherwise the run stops with one line. A server that reports ids
also has every echoed id compared with what was sent.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from gad.errors import GADError
from gad.kd_teachers.base import Teacher, TeacherDists, refuse_tokenizer

TOKEN_ID_PREFIX = "token_id:"
PROBE_MESSAGES = [
    {"role": "system", "content": "You are a careful assistant."},
    {
        "role": "user",
        "content": "Add: 23 45\nthe quick brown fox, def f(x):\n    return x**2  # ok?\nnaïve café 東京 🙂 €1.5e-3",
    },
    {"role": "assistant", "content": "68\n\tThe answer is 68; 1 7 3 (see [1]). Ünïcödé — done!"},
]


def probe_text(tokenizer: PreTrainedTokenizerBase) -> str:
    try:
        return tokenizer.apply_chat_template(PROBE_MESSAGES, tokenize=False)
    except Exception:  # a template that refuses a system turn, or none at all
        return "\n".join(m["content"] for m in PROBE_MESSAGES)


class APITeacher(Teacher):
    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        top_k: int = 20,
        api_key_env: str | None = "VLLM_API_KEY",
        token_ids: bool = True,
        max_tokens: int = 0,
        request_batch_size: int = 8,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        extra_body: dict[str, Any] | None = None,
    ):
        self.base_url, self.model, self.top_k, self.api_key_env = base_url, model, top_k, api_key_env
        self.token_ids, self.max_tokens = token_ids, max_tokens
        self.request_batch_size, self.concurrency = request_batch_size, concurrency
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.extra_body = dict(extra_body or {})
        self.client = None
        self.vocab_size = 0
        self.decoded_ids: dict[str, int | None] = {}
        self.requests = 0
        self.key = ""  # the API key (from the environment), masked out of every message

    def describe(self) -> str:
        return f"API teacher {self.model} at {self.base_url} (top-{self.top_k})"

    # ------------------------------------------------------------ connection and tokenizer check

    def setup(self, tokenizer: PreTrainedTokenizerBase) -> None:
        from openai import OpenAI

        from gad.api.redaction import protect_logs

        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        self.key = key or ""
        protect_logs([self.key])  # the openai client logs its retries
        self.client = OpenAI(
            base_url=self.base_url, api_key=key or "EMPTY", timeout=self.timeout_s, max_retries=self.max_retries
        )
        self.vocab_size = len(tokenizer)
        if not self.token_ids:
            self.decoded_ids = {}
            for i in range(len(tokenizer)):
                text = tokenizer.decode([i])
                self.decoded_ids[text] = None if text in self.decoded_ids else i  # None: ambiguous
        if self.model is None:
            self.model = self.served_model()
        self.check_tokenizer(tokenizer)

    def served_model(self) -> str:
        try:
            models = self.client.models.list().data
        except Exception as err:
            raise self.failure(err) from None
        if not models:
            raise GADError(
                f"method.teacher.model: the server at {self.base_url} lists no models; set method.teacher.model"
            )
        return models[0].id

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        text = probe_text(tokenizer)
        expected = tokenizer(text, add_special_tokens=True)["input_ids"]
        choice = self.complete(text, logprobs=1)[0]
        tokens = (choice.get("logprobs") or {}).get("tokens") or []
        got = [self.token_id(t) for t in tokens[: len(expected)]] if self.token_ids else tokens[: len(expected)]
        want = expected if self.token_ids else [tokenizer.decode([i]) for i in expected]
        if got != want or len(tokens) < len(expected):
            first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            show = lambda xs: repr(xs[first]) if first < len(xs) else "nothing"  # noqa: E731
            raise refuse_tokenizer(
                "method.teacher.base_url",
                f"the server at {self.base_url} tokenises a probe text into {len(tokens)} tokens, the student's "
                f"tokenizer into {len(expected)}; first difference at token {first}: {show(got)} vs {show(want)}",
            )

    # ------------------------------------------------------------ requests

    def failure(self, err: Exception) -> GADError:
        """One line for a failed request. A server's reply may echo the key ("Incorrect API key provided:
        sk-..."): the key, and anything shaped like one, is masked (gad.api.redaction, as collect and the judge)."""
        import openai

        from gad.api.redaction import redact

        if isinstance(err, openai.APIConnectionError):
            return GADError(
                f"method.teacher.base_url: cannot reach the teacher server at {self.base_url} ({type(err).__name__})"
            )
        if isinstance(err, openai.APIStatusError):
            detail = redact(getattr(err, "message", err), [self.key])[:300]
            hint = f" (the key is read from ${self.api_key_env})" if err.status_code in (401, 403) else ""
            return GADError(
                f"method.teacher: the teacher server at {self.base_url} answered HTTP {err.status_code}{hint}: {detail}"
            )
        detail = redact(f"{type(err).__name__}: {err}", [self.key])[:300]
        return GADError(f"method.teacher: the teacher server at {self.base_url} failed: {detail}")

    def complete(self, prompt: str | list[list[int]], logprobs: int) -> list[dict[str, Any]]:
        """One completions request with echo and no generation; the raw JSON choices in prompt order."""
        extra = {**self.extra_body}
        if self.token_ids:
            extra["return_tokens_as_token_ids"] = True
        try:
            raw = self.client.completions.with_raw_response.create(
                model=self.model,
                prompt=prompt,
                echo=True,
                max_tokens=self.max_tokens,
                logprobs=logprobs,
                temperature=1.0,
                extra_body=extra,
            )
            data = json.loads(raw.text)
        except GADError:
            raise
        except Exception as err:
            raise self.failure(err) from None
        self.requests += 1
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        expected = 1 if isinstance(prompt, str) else len(prompt)
        if len(choices) != expected:
            raise GADError(
                f"method.teacher: the teacher server at {self.base_url} returned {len(choices)} choices for {expected} prompts"
            )
        return choices

    def token_id(self, token: str) -> int:
        if token.startswith(TOKEN_ID_PREFIX):
            return int(token[len(TOKEN_ID_PREFIX) :])
        if self.token_ids:
            raise GADError(
                f"method.teacher.token_ids: the server at {self.base_url} returned the token {token!r}, not "
                "'token_id:<id>'; it does not support return_tokens_as_token_ids: set method.teacher.token_ids=false"
            )
        found = self.decoded_ids.get(token, -1)
        if found is None or found == -1:
            why = "several token ids decode to it" if found is None else "no token id decodes to it"
            raise GADError(
                f"method.teacher.token_ids: cannot map the server's token {token!r} back to an id ({why}); "
                "use a server that returns token ids (vLLM: method.teacher.token_ids=true)"
            )
        return found

    # ------------------------------------------------------------ scoring

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_width: int) -> TeacherDists:
        assert self.client is not None, "setup() first"
        ids, mask = input_ids.cpu(), attention_mask.cpu().bool()
        prompt_width = ids.size(1) - response_width
        rows = [ids[b][mask[b]].tolist() for b in range(ids.size(0))]
        starts = mask[:, :prompt_width].sum(-1).tolist()  # response token j sits at index start + j
        batches = [rows[i : i + self.request_batch_size] for i in range(0, len(rows), self.request_batch_size)]
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(batches)))) as pool:
            choices = [c for part in pool.map(lambda b: self.complete(b, self.top_k), batches) for c in part]

        k = self.top_k + 1  # the top k, plus the scored token when it is not among them
        out_ids = torch.zeros(ids.size(0), response_width, k, dtype=torch.long)
        out_lp = torch.full((ids.size(0), response_width, k), float("-inf"))
        valid = torch.zeros(ids.size(0), response_width, k, dtype=torch.bool)
        for b, (row, start, choice) in enumerate(zip(rows, starts, choices)):
            logprobs = choice.get("logprobs") or {}
            tokens, top = logprobs.get("tokens") or [], logprobs.get("top_logprobs") or []
            if len(tokens) < len(row) or len(top) < len(row):
                raise GADError(
                    f"method.teacher: the teacher server at {self.base_url} echoed {len(tokens)} tokens of a "
                    f"{len(row)}-token sequence; it must support echo=true with logprobs (vLLM does)"
                )
            if self.token_ids and any(self.token_id(t) != i for t, i in zip(tokens, row)):
                raise GADError(
                    f"method.teacher: the teacher server at {self.base_url} echoed different token ids than "
                    "were sent (does it re-tokenise prompts given as ids?)"
                )
            for j in range(len(row) - start):
                entries = top[start + j]
                if not entries:
                    raise GADError(
                        f"method.teacher: the teacher server at {self.base_url} gave no log-probs at position {start + j}"
                    )
                ranked = sorted(((self.token_id(t), float(v)) for t, v in entries.items()), key=lambda e: -e[1])[:k]
                for slot, (token, value) in enumerate(ranked):
                    if 0 <= token < self.vocab_size:
                        out_ids[b, j, slot], out_lp[b, j, slot], valid[b, j, slot] = token, value, True
        return TeacherDists(out_lp, out_ids, valid)
