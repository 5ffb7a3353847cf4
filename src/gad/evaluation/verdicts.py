"""The judge's pairwise prompt (MiniLLM/Vicuna) and the parsing of its verdicts (gad.evaluation.judge uses them)."""

from __future__ import annotations

import re

JUDGE_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
JUDGE_INSTRUCTION = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user question "
    "displayed above.\nPlease rate the helpfulness, relevance, accuracy, level of details of their responses. Each "
    "assistant receives an overall score on a scale of 1 to 10, where a higher score indicates better overall "
    "performance.\nPlease first output a single line containing only two values indicating the scores for Assistant 1 "
    "and 2, respectively. The two scores are separated by a space. In the subsequent line, please provide a "
    "comprehensive explanation of your evaluation, avoiding any potential bias and ensuring that the order in which "
    "the responses were presented does not affect your judgment."
)
PAIR_TEMPLATE = (
    "[Question]\n{question}\n\n"
    "[The Start of Assistant 1's Answer]\n{answer_1}\n\n[The End of Assistant 1's Answer]\n\n"
    "[The Start of Assistant 2's Answer]\n{answer_2}\n\n[The End of Assistant 2's Answer]\n\n"
    "[System]\n{prompt}\n\n"
)
TEMPLATE_VERSION = "minillm-pairwise-v1"
STUDENT_FIRST, STUDENT_SECOND = "sr", "rs"  # order of a verdict: who is Assistant 1
_VERDICT_LINE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:,\s*|\s+)(\d+(?:\.\d+)?)\s*$")


def question_text(messages: list[dict]) -> str:
    """The [Question] shown to the judge: the user turn, or the whole conversation with role labels."""
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) == 1 and len(messages) == 1:
        return turns[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def verdict_messages(question: str, answer_1: str, answer_2: str) -> list[dict[str, str]]:
    user = PAIR_TEMPLATE.format(question=question, answer_1=answer_1, answer_2=answer_2, prompt=JUDGE_INSTRUCTION)
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_verdict(text: str | None) -> tuple[float, float] | None:
    """The two scores on the first non-empty line, or None.

    That line must hold two numbers in [0, 10] and nothing else (markdown emphasis and a comma
    between them are tolerated): "8 7", "**8, 7**". "Assistant 1: 8" is not a verdict line.
    """
    if not text:
        return None
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    match = _VERDICT_LINE.match(line.replace("*", "").replace("#", ""))
    if match is None:
        return None
    a, b = float(match[1]), float(match[2])
    if not (0 <= a <= 10 and 0 <= b <= 10):
        return None
    return a, b


def student_reference(order: str, scores: tuple[float, float]) -> tuple[float, float]:
    """(student score, reference score) from a verdict's (Assistant 1, Assistant 2) scores."""
    return (scores[0], scores[1]) if order == STUDENT_FIRST else (scores[1], scores[0])
