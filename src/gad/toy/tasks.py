"""The toy world's tasks and their rule-based "teacher".

Five task kinds, each a single user prompt with a short answer a program can check:

  task      prompt                  response
  add       "Add: 23 45"            "68"
  reverse   "Reverse: 3 7 1"        "1 7 3"
  sort      "Sort: 3 7 1"           "1 3 7"
  max       "Max: 3 7 1"            "7"
  count     "Count a in abcab"      "2"

In distribution (ID), used for train and test_id:
  add                   both operands in 0..99 (1-2 digits)
  reverse / sort / max  lists of 2..4 single digits 0..9
  count                 a target letter from "abcd", word of 3..5 letters from "abcd"

Out of distribution (OOD), used for test_ood; the same prompt format and answer style,
only the sizes change, so every OOD prompt lies outside the ID ranges:
  add                   both operands in 100..999 (3 digits; sums up to 1998)
  reverse / sort / max  lists of 5..6 single digits 0..9
  count                 word of 7..9 letters from "abcd"

Randomness comes from a self-contained SplitMix64 generator so that the data is the
same on every Python version and platform.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gad.errors import GADError

TASKS = ("add", "reverse", "sort", "max", "count")
TEACHER = "toy-rules"
LETTERS = "abcd"
# A second rule-based teacher: the same correct answers in another style ("Add: 23 45" -> "Answer: 68"), for
# the two-teacher dump (`python -m gad.toy --two-teachers`); `gad.toy.check` accepts both styles.
SECOND_TEACHER = "toy-rules-labelled"
LABEL = "Answer: "


def in_style(answer: str, teacher: str) -> str:
    """`answer` as `teacher` writes it: TEACHER bare, SECOND_TEACHER after "Answer: "."""
    if teacher == TEACHER:
        return answer
    if teacher == SECOND_TEACHER:
        return f"{LABEL}{answer}"
    raise GADError(f"unknown toy teacher '{teacher}' (known: {TEACHER}, {SECOND_TEACHER})")


@dataclass(frozen=True)
class Ranges:
    """The sizes one distribution draws from (inclusive bounds)."""

    add_min: int
    add_max: int
    list_min: int
    list_max: int
    word_min: int
    word_max: int
    digit_max: int = 9


ID_RANGES = Ranges(add_min=0, add_max=99, list_min=2, list_max=4, word_min=3, word_max=5)
OOD_RANGES = Ranges(add_min=100, add_max=999, list_min=5, list_max=6, word_min=7, word_max=9)


class Rng:
    """SplitMix64: tiny, fast, and identical everywhere (unlike `random` across versions)."""

    _MASK = (1 << 64) - 1

    def __init__(self, seed: int) -> None:
        self.state = seed & self._MASK

    def next64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & self._MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self._MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self._MASK
        return z ^ (z >> 31)

    def randint(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi] (modulo bias is negligible at these sizes)."""
        return lo + self.next64() % (hi - lo + 1)

    def choice(self, seq: str | tuple | list) -> Any:
        return seq[self.randint(0, len(seq) - 1)]


def _fmt_list(items: Iterable[int]) -> str:
    return " ".join(str(x) for x in items)


def solve(task: str, args: dict[str, Any]) -> str:
    """The teacher: the one correct response for a task instance."""
    if task == "add":
        return str(args["a"] + args["b"])
    if task == "reverse":
        return _fmt_list(reversed(args["items"]))
    if task == "sort":
        return _fmt_list(sorted(args["items"]))
    if task == "max":
        return str(max(args["items"]))
    if task == "count":
        return str(args["word"].count(args["char"]))
    raise GADError(f"unknown toy task '{task}' (known: {', '.join(TASKS)})")


def format_prompt(task: str, args: dict[str, Any]) -> str:
    """The user message for a task instance."""
    if task == "add":
        return f"Add: {args['a']} {args['b']}"
    if task in ("reverse", "sort", "max"):
        return f"{task.capitalize()}: {_fmt_list(args['items'])}"
    if task == "count":
        return f"Count {args['char']} in {args['word']}"
    raise GADError(f"unknown toy task '{task}' (known: {', '.join(TASKS)})")


def sample_args(task: str, rng: Rng, ranges: Ranges) -> dict[str, Any]:
    """Draw the arguments of one task instance from a distribution."""
    if task == "add":
        return {"a": rng.randint(ranges.add_min, ranges.add_max), "b": rng.randint(ranges.add_min, ranges.add_max)}
    if task in ("reverse", "sort", "max"):
        n = rng.randint(ranges.list_min, ranges.list_max)
        return {"items": [rng.randint(0, ranges.digit_max) for _ in range(n)]}
    if task == "count":
        n = rng.randint(ranges.word_min, ranges.word_max)
        return {"char": rng.choice(LETTERS), "word": "".join(rng.choice(LETTERS) for _ in range(n))}
    raise GADError(f"unknown toy task '{task}' (known: {', '.join(TASKS)})")


def in_ranges(task: str, args: dict[str, Any], ranges: Ranges) -> bool:
    """Whether a task instance could have been drawn from `ranges`."""
    if task == "add":
        return all(ranges.add_min <= args[k] <= ranges.add_max for k in ("a", "b"))
    if task in ("reverse", "sort", "max"):
        items = args["items"]
        return ranges.list_min <= len(items) <= ranges.list_max and all(0 <= x <= ranges.digit_max for x in items)
    if task == "count":
        word = args["word"]
        return ranges.word_min <= len(word) <= ranges.word_max and set(word + args["char"]) <= set(LETTERS)
    raise GADError(f"unknown toy task '{task}' (known: {', '.join(TASKS)})")


def make_record(rid: str, task: str, args: dict[str, Any], dist: str) -> dict[str, Any]:
    """A canonical record (see `gad.data.records`) for one task instance."""
    answer = solve(task, args)
    return {
        "id": rid,
        "messages": [{"role": "user", "content": format_prompt(task, args)}],
        "response": answer,
        "teacher": TEACHER,
        "meta": {"task": task, "args": args, "answer": answer, "dist": dist},
    }


def generate(
    split: str,
    n: int,
    seed: int,
    ood: bool = False,
    exclude: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """`n` records with distinct prompts, tasks in round-robin order (balanced mixture).

    Ids are `toy-<split>-<6 digits>`. Prompts in `exclude` are never produced, which keeps
    test prompts out of train.
    """
    rng = Rng(seed)
    ranges = OOD_RANGES if ood else ID_RANGES
    seen = set(exclude)
    records: list[dict[str, Any]] = []
    for i in range(n):
        task = TASKS[i % len(TASKS)]
        for _ in range(10_000):
            args = sample_args(task, rng, ranges)
            prompt = format_prompt(task, args)
            if prompt not in seen:
                break
        else:  # pragma: no cover - the ranges hold far more prompts than any split needs
            raise GADError(f"toy task '{task}': ran out of distinct prompts for split '{split}'")
        seen.add(prompt)
        records.append(make_record(f"toy-{split}-{i:06d}", task, args, "ood" if ood else "id"))
    return records
