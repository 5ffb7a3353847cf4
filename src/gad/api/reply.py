"""A chat-completions reply as the tools use it, decoded by hand so a malformed one is named."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gad import json_lines
from gad.errors import one_line


@dataclass
class ChatReply:
    """The parts of a chat completion the tools use. `raw` keeps the decoded JSON."""

    text: str | None
    finish_reason: str | None
    refusal: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str | None = None
    retries: int = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


class MalformedReply(Exception):
    """A 2xx reply that is not a usable chat completion; `str()` says what is wrong."""


def parse_chat_reply(text: str) -> ChatReply:
    """Decode a chat-completions body by hand, so a malformed one is named rather than half-parsed."""
    try:
        data = json_lines.loads(text)  # a ValueError when nested too deeply (a hostile server)
    except (ValueError, TypeError) as err:
        raise MalformedReply(f"reply is not JSON ({one_line(err)[:80]})") from None
    if not isinstance(data, dict):
        raise MalformedReply("reply is not a JSON object")
    if "error" in data and "choices" not in data:
        raise MalformedReply(f"reply carries an error: {one_line(data['error'])[:200]}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedReply("reply has no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise MalformedReply("reply's first choice has no message")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise MalformedReply("reply's message content is not a string")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}

    def count(name: str) -> int:
        value = usage.get(name)
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0

    refusal = message.get("refusal")
    return ChatReply(
        text=content,
        finish_reason=choices[0].get("finish_reason") if isinstance(choices[0].get("finish_reason"), str) else None,
        refusal=refusal if isinstance(refusal, str) and refusal.strip() else None,
        prompt_tokens=count("prompt_tokens"),
        completion_tokens=count("completion_tokens"),
        model=data.get("model") if isinstance(data.get("model"), str) else None,
        raw=data,
    )
