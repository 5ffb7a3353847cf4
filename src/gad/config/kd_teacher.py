"""`method.teacher` of KD (gad/kd_teachers/), typed: one definition of each of its knobs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from gad.config.typed import knob, require
from gad.errors import url_has_credentials


@dataclass
class KDTeacherConfig:
    """`method.teacher` of KD (gad/kd_teachers/): `kind` picks the teacher and which keys it reads.

    local: path, tokenizer, top_k (null = full distributions), dtype, attn_implementation, build.
    api:   base_url, model, top_k (required), api_key_env, token_ids, max_tokens, request_batch_size,
           concurrency, timeout_s, max_retries, extra_body.
    The other kind's keys may stay and are ignored.
    """

    kind: str = knob(
        "local", "local: a Hugging Face model in this process; api: an OpenAI-compatible completions server"
    )
    path: Optional[str] = knob(None, "local: model folder or hub id (e.g. a larger model of the student's family)")
    tokenizer: Optional[str] = knob(
        None, "local: the teacher's tokenizer folder, compared with the student's (null: path)"
    )
    dtype: str = knob("float32", "local: teacher weights' dtype (float32 | bfloat16 | float16)")
    attn_implementation: str = knob("sdpa", "local: eager | sdpa | flash_attention_2")
    build: Optional[dict[str, Any]] = knob(
        None, "local: a recipe that fits a teacher into `path` when missing (_target_: its builder; the toy world's)"
    )
    top_k: Optional[int] = knob(
        None, "log-probs per position: null = full distributions (local only); k = top-k + rest"
    )
    base_url: Optional[str] = knob(
        "http://127.0.0.1:8000/v1", "api: the server's API root (vllm serve <teacher> --max-logprobs 20)"
    )
    model: Optional[str] = knob(None, "api: the served model name (null: the first one the server lists)")
    api_key_env: str = knob("VLLM_API_KEY", "api: NAME of the environment variable with the key (unset: a placeholder)")
    token_ids: bool = knob(True, "api: ask for tokens as token_id:<id> (vLLM); false maps token strings")
    max_tokens: int = knob(0, "api: tokens generated after the echo (0: none; 1 for servers that refuse 0)")
    request_batch_size: int = knob(8, "api: sequences per completions request")
    concurrency: int = knob(8, "api: requests in flight at once")
    timeout_s: float = knob(120, "api: per-attempt timeout, seconds")
    max_retries: int = knob(3, "api: retries on 429/5xx/timeouts (the openai client's own layer)")
    extra_body: dict[str, Any] = knob({}, "api: extra JSON fields merged into every request")

    LOCAL: ClassVar[tuple[str, ...]] = ("path", "tokenizer", "top_k", "dtype", "attn_implementation", "build")
    API: ClassVar[tuple[str, ...]] = (
        "base_url",
        "model",
        "top_k",
        "api_key_env",
        "token_ids",
        "max_tokens",
        "request_batch_size",
        "concurrency",
        "timeout_s",
        "max_retries",
        "extra_body",
    )

    def __post_init__(self) -> None:
        require(self.kind in ("local", "api"), "kind", self.kind, "must be 'local' or 'api'")
        require(
            self.top_k is None or self.top_k >= 1,
            "top_k",
            self.top_k,
            "must be an integer >= 1 (null: full distributions, local teachers only)",
        )
        if self.kind == "local":
            require(
                bool(self.path),
                "path",
                self.path,
                "set the teacher model (a Hugging Face folder or hub id) for method.teacher.kind=local",
            )
            require(
                self.dtype in ("float32", "bfloat16", "float16"),
                "dtype",
                self.dtype,
                "must be float32, bfloat16 or float16",
            )
            return
        require(
            bool(self.base_url),
            "base_url",
            self.base_url,
            "set the server's API root (e.g. http://127.0.0.1:8000/v1) for method.teacher.kind=api",
        )
        require(  # never echoed: the password would reach the error line (the key comes from api_key_env)
            not url_has_credentials(self.base_url),
            "base_url",
            None,
            "must not carry credentials (user:password@): put the key in the environment variable "
            "named by method.teacher.api_key_env",
        )
        require(
            self.top_k is not None,
            "top_k",
            self.top_k,
            "an API teacher needs a number of log-probs per "
            "position (vLLM allows up to its --max-logprobs, 20 by default)",
        )
        for key in ("request_batch_size", "concurrency"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "must be an integer >= 1")
        require(self.max_tokens >= 0, "max_tokens", self.max_tokens, "must be an integer >= 0")
        require(self.timeout_s > 0, "timeout_s", self.timeout_s, "must be > 0")
        require(self.max_retries >= 0, "max_retries", self.max_retries, "must be an integer >= 0")

    def arguments(self) -> dict[str, Any]:
        """The keys the chosen kind reads, as keyword arguments of its teacher class."""
        return {key: getattr(self, key) for key in (self.LOCAL if self.kind == "local" else self.API)}
