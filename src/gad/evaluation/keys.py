"""Cache keys: a stable hash of any JSON value. Generations, perplexities and judge replies are cached
under keys built from what changes them (model, prompt, parameters), so a re-run recomputes nothing."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def prompt_sha(messages: list[dict]) -> str:
    return sha(messages)[:32]
