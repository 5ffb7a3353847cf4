"""Judge-free metrics of a student response against the teacher's.

- ROUGE-L F-measure (the `rouge-score` package, its default tokenizer: lower-cased runs of
  [a-z0-9], no stemming). The paper uses it as a training diagnostic only.
- n-gram overlap F1 for n = 1..6 on the same tokens: clipped n-gram matches, precision over the
  student's n-grams, recall over the teacher's. A prompt whose teacher response has no n-gram of
  order n (fewer than n tokens) has no F1 for that n and is left out of that n's mean.
- Lengths in tokens of the student's own tokenizer (both texts, special tokens excluded).
- Perplexity of the teacher response under the student: teacher-forced NLL of the response
  tokens plus the end-of-turn token (as in training), token-mean over the whole set, exp.
- Toy world: exact match checked by the toy teacher's own program (`gad.toy.check`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from gad.errors import GADError

NGRAM_ORDERS = (1, 2, 3, 4, 5, 6)


def tokens(text: str) -> list[str]:
    """The tokens ROUGE and n-gram F1 compare (rouge-score's default tokenizer)."""
    return _rouge_tokenizer().tokenize(text or "")


_TOKENIZER = None
_SCORER = None


def _rouge_tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        try:
            from rouge_score import tokenizers
        except ImportError:
            raise GADError("ROUGE-L needs the rouge-score package: pip install rouge-score") from None
        _TOKENIZER = tokenizers.DefaultTokenizer(use_stemmer=False)
    return _TOKENIZER


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure in [0, 1]."""
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=_rouge_tokenizer())
    return float(_SCORER.score(reference or "", prediction or "")["rougeL"].fmeasure)


def ngrams(toks: Sequence[str], n: int) -> Counter:
    return Counter(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))


def ngram_f1(prediction: Sequence[str], reference: Sequence[str], n: int) -> float | None:
    """Clipped n-gram overlap F1 of two token lists; None when the reference has no n-gram."""
    ref = ngrams(reference, n)
    if not ref:
        return None
    pred = ngrams(prediction, n)
    overlap = sum((pred & ref).values())
    if overlap == 0:
        return 0.0
    precision = overlap / sum(pred.values())
    recall = overlap / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def text_metrics(prediction: str, reference: str | None) -> dict[str, float | None]:
    """ROUGE-L and n-gram F1 (n = 1..6) of one response against the teacher's (None without one)."""
    if reference is None:
        return {"rougeL": None, **{f"f1_{n}": None for n in NGRAM_ORDERS}}
    pred, ref = tokens(prediction), tokens(reference)
    out: dict[str, float | None] = {"rougeL": rouge_l(prediction, reference)}
    for n in NGRAM_ORDERS:
        out[f"f1_{n}"] = ngram_f1(pred, ref, n)
    return out


def token_length(tokenizer, text: str | None) -> int | None:
    if text is None:
        return None
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def mean(values: Sequence[float | None]) -> float:
    """Mean of the defined values; NaN when there are none."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else math.nan


def ratio_of_sums(num: Sequence[float | None], den: Sequence[float | None]) -> float:
    """sum(num) / sum(den) over the pairs where both are defined; NaN if none or den sums to 0."""
    pairs = [(a, b) for a, b in zip(num, den) if a is not None and b is not None]
    total = sum(b for _, b in pairs)
    return sum(a for a, _ in pairs) / total if pairs and total > 0 else math.nan


def perplexity(nll_sums: Sequence[float | None], token_counts: Sequence[int | None]) -> float:
    """exp(total NLL / total tokens) over the prompts that have both."""
    pairs = [(a, b) for a, b in zip(nll_sums, token_counts) if a is not None and b]
    tokens_total = sum(b for _, b in pairs)
    return math.exp(sum(a for a, _ in pairs) / tokens_total) if tokens_total else math.nan


def is_toy_record(record: dict[str, Any]) -> bool:
    meta = record.get("meta")
    return isinstance(meta, dict) and ("answer" in meta or ("task" in meta and "args" in meta))


def toy_correct(record: dict[str, Any], response: str) -> bool | None:
    """Exact match by the toy teacher's program; None for a record that is not from the toy world."""
    if not is_toy_record(record):
        return None
    from gad.toy.check import check

    return bool(check(record["meta"], response))
