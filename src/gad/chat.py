"""One system-prompt policy for teacher, student and evaluation (`data.system_prompt`, docs/collect.md).

Some chat templates (SmolLM2's, Qwen2.5's) insert a default system prompt into every conversation
that has none ("You are a helpful AI assistant named SmolLM, ..."), while an API teacher gets the
messages as they are: without one policy, the student trains and is evaluated on prompts the teacher
never saw. The policy says which system turn a conversation *without one* gets, wherever a
conversation is sent (src/collect.py) or rendered (training's data module, src/eval.py):

  none              no system prompt (the default): sent as is; rendered with an empty system turn
                    where the template would otherwise insert its default (the closest such a
                    template comes to "none")
  template_default  the student template's own default, sent to the teacher as that system turn
  any other text    that text, as the system turn, everywhere

A conversation that has its own system turn keeps it under every policy.
"""

from __future__ import annotations

from gad.errors import GADError

NONE, TEMPLATE_DEFAULT = "none", "template_default"
_DEFAULTS: dict[str, str] = {}  # chat template -> its default system prompt


def template_default_system(tokenizer) -> str:
    """The system prompt `tokenizer`'s chat template inserts into a conversation without one ("" if none).

    Read off the template itself: a conversation rendered with a marker system turn and without one
    share the text around the marker; what the template puts in its place is the default.
    """
    template = str(getattr(tokenizer, "chat_template", None))
    if template not in _DEFAULTS:
        user = [{"role": "user", "content": "probe"}]
        marker = "\x01system\x01"
        try:
            bare = tokenizer.apply_chat_template(user, tokenize=False)
            marked = tokenizer.apply_chat_template([{"role": "system", "content": marker}, *user], tokenize=False)
        except Exception:  # a template without system turns
            bare, marked = "", ""
        head, _, tail = marked.partition(marker)
        found = (
            marker in marked and bare.startswith(head) and bare.endswith(tail) and len(bare) >= len(head) + len(tail)
        )
        _DEFAULTS[template] = bare[len(head) : len(bare) - len(tail)] if found else ""
    return _DEFAULTS[template]


def with_system_prompt(messages: list[dict], policy: str | None, tokenizer=None) -> list[dict]:
    """`messages` as sent (tokenizer None: to a teacher or judge) or rendered (the student's tokenizer) under `policy`."""
    messages = list(messages)
    if messages and messages[0].get("role") == "system":
        return messages
    if policy is None or policy == NONE:
        if tokenizer is not None and template_default_system(tokenizer):
            return [{"role": "system", "content": ""}, *messages]
        return messages
    if policy == TEMPLATE_DEFAULT:
        if tokenizer is None:
            raise GADError(
                "system_prompt=template_default needs the student's tokenizer (to read its template's default)"
            )
        text = template_default_system(tokenizer)
        return [{"role": "system", "content": text}, *messages] if text else messages
    return [{"role": "system", "content": str(policy)}, *messages]


def system_prompt_sent(policy: str | None, tokenizer=None) -> str | None:
    """The system prompt a teacher is sent with a conversation that has none, under `policy` (None: none)."""
    first = with_system_prompt(
        [{"role": "user", "content": ""}], policy, tokenizer if policy == TEMPLATE_DEFAULT else None
    )[0]
    return first["content"] if first["role"] == "system" else None
