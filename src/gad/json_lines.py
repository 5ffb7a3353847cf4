"""One JSON value from a line someone else wrote (a dump, a prompt file, a journal, a server's reply).

Two things `json.loads` accepts that break whatever comes after it are refused as a ValueError, which every
reader already turns into a row error naming the file and line: a value nested too deeply, and a lone
surrogate escape (`"\\ud800"`: a str no tokenizer or UTF-8 writer accepts; a tokenizer raised TypeError).

`json.loads` recurses once per nesting level: a line of 100,000 `[` ends in RecursionError (a traceback,
not a row error), and a value just under Python's recursion limit parses but breaks whatever walks it
later (writing it back, comparing it): both are `TooDeep`.

The bound: a canonical record nests four levels (record > messages > message > content); MAX_DEPTH = 64
leaves room for any metadata a source carries and stays far below the recursion limit (1000) that the
json module and everything after it share.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 64


class TooDeep(ValueError):
    """A JSON value nested deeper than MAX_DEPTH."""

    def __init__(self) -> None:
        super().__init__(f"JSON nested deeper than {MAX_DEPTH} levels")


class NotText(ValueError):
    """A string with a lone surrogate (an escape like \\ud800 that is half of a pair): not Unicode text."""

    def __init__(self, char: str) -> None:
        super().__init__(f"a string holds a lone surrogate (\\u{ord(char):04x}), which is not valid Unicode text")


# a \uD800-\uDFFF escape, the only way a JSON line spells a surrogate (a raw one is invalid UTF-8 already)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")


def depth(value: Any) -> int:
    """How deeply lists and dicts nest in `value` (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level <= MAX_DEPTH:  # deeper than the bound: already refused, no need to look further
            stack.extend((child, level + 1) for child in children)
    return deepest


def loads(raw: str | bytes) -> Any:
    """`json.loads(raw)`, or a ValueError like json's own: `TooDeep` for a value nested deeper than MAX_DEPTH,
    `NotText` for a lone surrogate. Cheap on ordinary lines: the checks run only on a line with more than
    MAX_DEPTH brackets, or with a surrogate escape."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise TooDeep() from None
    opening = (b"[", b"{") if isinstance(raw, bytes) else ("[", "{")
    if raw.count(opening[0]) + raw.count(opening[1]) > MAX_DEPTH and depth(value) > MAX_DEPTH:
        raise TooDeep()
    escape = _SURROGATE_ESCAPE_BYTES if isinstance(raw, bytes) else _SURROGATE_ESCAPE
    if escape.search(raw):  # a pair (an emoji) is fine; half of one is not
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as err:
            raise NotText(err.object[err.start]) from None
    return value
