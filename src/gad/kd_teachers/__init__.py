"""Teachers for KD (`method=kd`): distributions over the student's vocabulary for given token sequences.

`method.teacher` is one mapping (gad.config.kd_teacher.KDTeacherConfig); `kind` picks the teacher and
the keys it reads:

    kind: local   path, tokenizer, top_k (null = full distributions), dtype, attn_implementation, build
    kind: api     base_url, model, top_k (required), api_key_env, token_ids, max_tokens,
                  request_batch_size, concurrency, timeout_s, max_retries, extra_body

The other kind's keys may stay in the mapping (they all have defaults); a key that neither kind
knows is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gad.config.kd_teacher import KDTeacherConfig
from gad.config.typed import typed
from gad.kd_teachers.api import APITeacher
from gad.kd_teachers.base import Teacher, TeacherDists, tokenizer_mismatch
from gad.kd_teachers.local import LocalTeacher


def build_teacher(spec: KDTeacherConfig | Mapping[str, Any]) -> Teacher:
    """The teacher `method.teacher` describes (no loading or network until `setup`). A mapping (a teacher
    built outside a composed config, e.g. by a test) is validated here; a `KDTeacherConfig` already was."""
    config = spec if isinstance(spec, KDTeacherConfig) else typed(KDTeacherConfig, spec, "method.teacher")
    return (LocalTeacher if config.kind == "local" else APITeacher)(**config.arguments())


__all__ = ["APITeacher", "LocalTeacher", "Teacher", "TeacherDists", "build_teacher", "tokenizer_mismatch"]
