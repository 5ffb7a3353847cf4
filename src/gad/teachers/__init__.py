"""Teachers for KD (`method=kd`): distributions over the student's vocabulary for given token sequences.

`method.teacher` is one plain mapping; `kind` picks the teacher and the keys it reads:

    kind: local   path, tokenizer, top_k (null = full distributions), dtype, attn_implementation, build
    kind: api     base_url, model, top_k (required), api_key_env, token_ids, max_tokens,
                  request_batch_size, concurrency, timeout_s, max_retries, extra_body

The other kind's keys may stay in the mapping (conf/method/kd.yaml lists them all); a key
that neither kind knows is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gad.errors import GADError
from gad.teachers.api import APITeacher
from gad.teachers.base import Teacher, TeacherDists, tokenizer_mismatch
from gad.teachers.local import LocalTeacher

LOCAL_KEYS = {"path", "tokenizer", "top_k", "dtype", "attn_implementation", "build"}
API_KEYS = {"base_url", "model", "top_k", "api_key_env", "token_ids", "max_tokens", "request_batch_size", "concurrency",
            "timeout_s", "max_retries", "extra_body"}
KINDS = {"local": LOCAL_KEYS, "api": API_KEYS}


def _to_plain(spec: Any) -> dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(spec, DictConfig):
            return OmegaConf.to_container(spec, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if not isinstance(spec, Mapping):
        raise GADError(f"method.teacher: expected a mapping with a 'kind' (local or api), got {spec!r}")
    return dict(spec)


def _positive_int(spec: dict, key: str, minimum: int = 1) -> None:
    value = spec.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise GADError(f"method.teacher.{key}={value} is invalid: must be an integer >= {minimum}")


def build_teacher(spec: Any) -> Teacher:
    """Validate `method.teacher` and build the teacher (no loading or network until `setup`)."""
    spec = _to_plain(spec)
    kind = spec.pop("kind", None)
    if kind not in KINDS:
        raise GADError(f"method.teacher.kind={kind} is invalid: must be 'local' or 'api'")
    unknown = set(spec) - LOCAL_KEYS - API_KEYS
    if unknown:
        known = ", ".join(sorted({"kind"} | LOCAL_KEYS | API_KEYS))
        raise GADError(f"method.teacher.{sorted(unknown)[0]}: unknown key (known: {known})")
    args = {k: v for k, v in spec.items() if k in KINDS[kind]}
    if args.get("top_k") is not None:
        _positive_int(args, "top_k")
    if kind == "local":
        if not args.get("path"):
            raise GADError("method.teacher.path: set the teacher model (a Hugging Face folder or hub id) for method.teacher.kind=local")
        if args.get("dtype", "float32") not in ("float32", "bfloat16", "float16"):
            raise GADError(f"method.teacher.dtype={args['dtype']} is invalid: must be float32, bfloat16 or float16")
        return LocalTeacher(**args)
    if not args.get("base_url"):
        raise GADError("method.teacher.base_url: set the server's API root (e.g. http://127.0.0.1:8000/v1) for method.teacher.kind=api")
    if args.get("top_k") is None:
        raise GADError("method.teacher.top_k: an API teacher needs a number of log-probs per position "
                       "(vLLM allows up to its --max-logprobs, 20 by default)")
    for key in ("request_batch_size", "concurrency"):
        if key in args:
            _positive_int(args, key)
    if "max_tokens" in args:
        _positive_int(args, "max_tokens", minimum=0)
    return APITeacher(**args)


__all__ = ["APITeacher", "LocalTeacher", "Teacher", "TeacherDists", "build_teacher", "tokenizer_mismatch"]
