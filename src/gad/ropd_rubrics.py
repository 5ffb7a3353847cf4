"""ROPD's rubric protocol as pure functions: the Rubricator's and the Verifier's messages, the parsing of their
JSON replies, and the reward s_i = sum_k w_k v_ik / (sum_k w_k + eps) (arXiv 2605.07396; README of the official
implementation, github.com/Peregrine123/ROPD_official).

The two prompts are this project's own English texts. They follow the structure of the official templates
(prompts/rubricator.txt, prompts/verifier.txt, in Chinese; rendered by algo/ropd/prompts.py) and ask for the
same JSON schemas (algo/ropd_clients.py, algo/ropd/client.py):

  rubric   {"schema_version": "ropd.rubric.v1", "maximum_score": <sum of points>,
            "rubrics": [{"criterion_id": "c1", "category": "...", "criterion": "...", "points": 1..5}, ...]}
  verdicts {"schema_version": "ropd.batch_verifier.v2",
            "answers": [{"answer_index": 1, "judgement": [true, false, ...], "final_score": 7}, ...]}

Checks, as the official client's: 4..12 criteria (`method.grader.min_criteria/max_criteria`), ids c1, c2, ...
unique, points integers 1..5; one verdict per answer, indices 1..n in order, one boolean per criterion.
`maximum_score` and `final_score` are recomputed from the points and judgements, never trusted (as official).
Departures: keys beyond the schema are ignored (official: refused), and a missing `maximum_score` is no error.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

RUBRIC_SCHEMA = "ropd.rubric.v1"
VERDICT_SCHEMA = "ropd.batch_verifier.v2"
TEMPLATE_VERSION = "gad-ropd-1"  # part of every journal key: a new wording never reuses old replies
EPS = 1e-8  # the paper's epsilon; the official code divides by maximum_score (>= 4 points) without it
CATEGORIES = (
    "Task Fulfillment and Requirement Compliance",
    "Observable Response Quality",
    "General Reasoning Quality",
)

RUBRICATOR_PROMPT = """You design grading rubrics. Below are a question, reference responses (high-confidence \
but not guaranteed correct, and not a complete list of valid approaches), and student responses that will all be \
graded with the one rubric you write.

Write a shared rubric that is valid for the question itself and uses the references as a signal of quality to \
distil, so that the same rubric separates stronger from weaker responses. Reward substance a learner can act on: \
never the references' wording, style or particular method.

<question>
{question}
</question>

<reference_responses>
{references}
</reference_responses>

<student_responses>
{students}
</student_responses>

<additional_instructions>
{instructions}
</additional_instructions>

Every criterion must be:
1. Specific and self-contained: it names exactly what to check (not "is correct" or "explains well").
2. Binary: a grader can mark it true or false from ONE response alone, without seeing the references.
3. Useful to learn from: it points at a real improvement.
4. Fair to other approaches: a different but sound method that shows the same merit passes it.
5. Discriminating: prefer merits that the stronger responses show and the weaker ones lack.

Pick each criterion's category, in this order of priority, and use only those that matter for this question:
- "Task Fulfillment and Requirement Compliance": does the response deliver what was asked (the final quantity, \
object or conclusion, not an intermediate one) and respect explicit requirements (answer type, output format, \
constraints) whose violation makes it unusable?
- "Observable Response Quality": is the answer supported, directly usable and verifiable, free of unsupported \
claims and detours?
- "General Reasoning Quality": planning, self-checking, clarity or focus, only where they visibly separate the \
responses.

Start from a base rubric valid for any response to the question; then sharpen one or two criteria to capture \
the decisive gaps among these responses. Usually one high-value criterion checks the core task outcome.

Points (integers) carry the contrast; do not spread them evenly:
- 5: the decisive bottleneck: failing it means the core task was not done.
- 4: a strong discriminator of correctness or usability.
- 3: rare; clearly important but not decisive.
- 2: a supporting merit.
- 1: routine or surface requirements (formatting); pure formatting never gets more than 1.
Normally at most two criteria get 4 or 5 points, and when the gap lies in a few failure points those criteria \
hold more than half of the total.

Never write a criterion that asks for the same method, final answer, wording or structure as a reference, that \
encodes a possibly wrong intermediate result of a reference, that depends on an incidental step number or \
phrase, or that rewards length.

Reply with one JSON object only, no other text:
{{"schema_version": "ropd.rubric.v1", "rubrics": [{{"criterion_id": "c1", "category": "<one of the categories \
above>", "criterion": "<what to check>", "points": <1-5>}}, ...], "maximum_score": <the sum of the points>}}
with {min_items} to {max_items} criteria, ids c1, c2, ... in order, unique."""

VERIFIER_PROMPT = """You grade several responses to one question against a shared rubric, all at once.

<question>
{question}
</question>

<rubric>
{rubric}
</rubric>

{answers}

<additional_instructions>
{instructions}
</additional_instructions>

For every response, go through the rubric's criteria in order:
- true if the response clearly satisfies the criterion (every condition of it, when it has several); else false.
- A different but valid approach that meets the criterion is true.
- Use no standard beyond the rubric and the question; length, confidence or a polished style earn nothing unless \
a criterion asks for them.
- Grade each response on its own; never compare responses with each other. There is no partial credit.

Reply with one JSON object only, no other text, the responses in their given order:
{{"schema_version": "ropd.batch_verifier.v2", "answers": [{{"answer_index": 1, "judgement": [<one true/false per \
criterion, in rubric order>], "final_score": <sum of the points of the true criteria>}}, ...]}}
with exactly {count} entries (answer_index 1 to {count}), each judgement holding exactly {items} booleans."""


@dataclass(frozen=True)
class Criterion:
    criterion_id: str
    category: str
    criterion: str
    points: int


class ReplyError(ValueError):
    """A reply that does not follow the schema; the message says what is wrong (one line)."""


def sha(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def judged_text(response: str) -> str:
    """What the grader sees of a response: the text after a reasoning block's last `</think>` when there is any
    (as the official reward manager trims it), else the response."""
    if "</think>" in response:
        after = response.rsplit("</think>", 1)[1].strip()
        if after:
            return after
    return response


def _block(tag: str, texts: list[str]) -> str:
    return "\n".join(f'<{tag} index="{i}">\n{text}\n</{tag}>' for i, text in enumerate(texts, start=1))


def rubricator_messages(
    question: str, references: list[str], students: list[str], *, instructions: str, min_items: int, max_items: int
) -> list[dict[str, str]]:
    text = RUBRICATOR_PROMPT.format(
        question=question,
        references=_block("reference", references),
        students=_block("student", students),
        instructions=instructions,
        min_items=min_items,
        max_items=max_items,
    )
    return [{"role": "user", "content": text}]


def rubric_json(rubric: list[Criterion]) -> str:
    return json.dumps([c.__dict__ for c in rubric], ensure_ascii=False, indent=1)


def verifier_messages(
    question: str, rubric: list[Criterion], answers: list[str], *, instructions: str
) -> list[dict[str, str]]:
    text = VERIFIER_PROMPT.format(
        question=question,
        rubric=rubric_json(rubric),
        answers=_block("response", answers),
        instructions=instructions,
        count=len(answers),
        items=len(rubric),
    )
    return [{"role": "user", "content": text}]


def _json_object(reply: str | None) -> dict[str, Any]:
    text = (reply or "").strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, flags=re.DOTALL)
    if fenced:
        text = fenced.group(1)
    try:
        value = json.loads(text)
    except ValueError as err:
        raise ReplyError(f"not JSON ({str(err)[:60]})") from None
    if not isinstance(value, dict):
        raise ReplyError("not a JSON object")
    return value


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def parse_rubric(reply: str | None, *, min_items: int, max_items: int) -> list[Criterion]:
    """The rubric a Rubricator reply holds; `ReplyError` when it breaks the schema."""
    data = _json_object(reply)
    if data.get("schema_version") != RUBRIC_SCHEMA:
        raise ReplyError(f"schema_version is not {RUBRIC_SCHEMA}")
    items = data.get("rubrics")
    if not isinstance(items, list) or not min_items <= len(items) <= max_items:
        raise ReplyError(f"rubrics must be a list of {min_items} to {max_items} criteria")
    rubric = []
    for i, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise ReplyError(f"criterion {i} is not an object")
        cid = str(item.get("criterion_id", "")).strip().lower()
        texts = [item.get(k) for k in ("category", "criterion")]
        if not re.fullmatch(r"c\d+", cid) or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ReplyError(f"criterion {i} needs criterion_id c<n>, a category and a criterion text")
        points = _integer(item.get("points"))
        if points is None or not 1 <= points <= 5:
            raise ReplyError(f"criterion {i}: points must be an integer 1 to 5")
        rubric.append(Criterion(cid, texts[0].strip(), texts[1].strip(), points))
    if len({c.criterion_id for c in rubric}) != len(rubric):
        raise ReplyError("criterion ids repeat")
    return rubric


def parse_verdicts(reply: str | None, *, answers: int, items: int) -> list[list[bool]]:
    """One judgement list (a boolean per criterion) per answer, in the answers' order; `ReplyError` otherwise."""
    data = _json_object(reply)
    if data.get("schema_version") != VERDICT_SCHEMA:
        raise ReplyError(f"schema_version is not {VERDICT_SCHEMA}")
    entries = data.get("answers")
    if not isinstance(entries, list) or len(entries) != answers:
        raise ReplyError(f"answers must hold {answers} entries")
    out = []
    for i, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or _integer(entry.get("answer_index")) != i:
            raise ReplyError(f"entry {i}: answer_index must be {i} (1..n in order)")
        judgement = entry.get("judgement")
        if (
            not isinstance(judgement, list)
            or len(judgement) != items
            or not all(isinstance(v, bool) for v in judgement)
        ):
            raise ReplyError(f"entry {i}: judgement must hold {items} booleans")
        out.append(list(judgement))
    return out


def rubric_reward(points: list[int], judgement: list[bool]) -> float:
    """s = sum_k w_k v_k / (sum_k w_k + eps): the weighted share of the rubric a response meets."""
    if len(points) != len(judgement):
        raise ValueError(f"rubric_reward: {len(points)} criteria but {len(judgement)} judgements")
    return sum(w for w, v in zip(points, judgement) if v) / (sum(points) + EPS)


def shuffled(key: str, answers: list[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    """The (source, index, text) answers in the Verifier's order: references and rollouts mixed by a sha of the
    prompt's key and each answer (the official reward manager's deterministic shuffle), so the position of a
    response never tells the Verifier where it came from, and a resumed run shows them in the same order."""
    return sorted(answers, key=lambda a: (sha([key, a[0], a[1], a[2]]), a[0], a[1]))
