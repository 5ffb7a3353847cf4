"""The deterministic draw: a held-out test split first, then `sample.n` train prompts, as records."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from gad.errors import GADError
from gad.teacher_data.prepare.config import PrepareConfig
from gad.teacher_data.prepare.filters import SplitReport, TokenCounter, _filter
from gad.teacher_data.prepare.sources import Candidate, split_rows


def _order(cands: list[Candidate], seed: int) -> list[Candidate]:
    for c in cands:
        c.key = hashlib.sha256(f"{seed}\x1f{c.norm}".encode()).hexdigest()
    return sorted(cands, key=lambda c: (c.key, json.dumps(c.messages, ensure_ascii=False)))


def _records(cands: list[Candidate], used: set[str]) -> list[dict[str, Any]]:
    out = []
    for c in cands:
        rid = c.id or "h-" + hashlib.sha1(json.dumps(c.messages, ensure_ascii=False).encode()).hexdigest()[:16]
        if rid in used:  # a source id reused by two kept prompts: keep both, distinctly
            rid = f"{rid}~{c.key[:8]}"
        used.add(rid)
        rec: dict[str, Any] = {"id": rid, "messages": c.messages}
        if c.response is not None:
            rec["response"] = c.response
            rec["teacher"] = c.meta.pop("teacher", None) or "unknown"
        rec["meta"] = c.meta
        out.append(rec)
    return out


@dataclass
class PrepareResult:
    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    reports: list[SplitReport]
    overlap_dropped: int
    not_sampled: int


def run_prepare(pc: PrepareConfig) -> PrepareResult:
    """Read, filter, sample; returns the two splits and the counts (writes nothing)."""

    counter = (
        TokenCounter(pc.filters.tokenizer)
        if pc.filters.tokenizer
        and (pc.filters.min_prompt_tokens is not None or pc.filters.max_prompt_tokens is not None)
        else None
    )
    seen: dict[str, set] = {"exact": set(), "norm": set()}
    reports = []
    test_pool: list[Candidate] | None = None
    if pc.source.test_split:  # gad_release: the release's own test split; read first so train dedups against it
        rep = SplitReport(f"{pc.source.test_split} split")
        test_pool = _filter(
            split_rows(pc.source.path, pc.source.test_split, (pc.source.split,), named_only=True),
            pc,
            rep,
            counter,
            seen,
        )
        if rep.rows == 0:
            raise GADError(
                f"{pc.source.path}: no '{pc.source.test_split}' split (source.test_split; null carves the test split from '{pc.source.split}')"
            )
        reports.append(rep)
    rep = SplitReport(f"{pc.source.split} split")
    pool = _filter(
        split_rows(pc.source.path, pc.source.split, (pc.source.test_split,) if pc.source.test_split else ()),
        pc,
        rep,
        counter,
        seen,
    )
    reports.insert(0, rep)
    if rep.rows == 0:
        raise GADError(f"{pc.source.path}: split '{pc.source.split}' has no rows")
    pool = _order(pool, pc.sample.seed)
    if test_pool is not None:
        test = _order(test_pool, pc.sample.seed)[: pc.sample.test_size]
        rest = pool
    else:
        test, rest = pool[: pc.sample.test_size], pool[pc.sample.test_size :]
    test_norms = {c.norm for c in test}
    kept = [c for c in rest if c.norm not in test_norms]
    overlap = len(rest) - len(kept)
    train = kept[: pc.sample.n] if pc.sample.n is not None else kept
    used: set[str] = set()
    test_records = _records(test, used)
    return PrepareResult(_records(train, used), test_records, reports, overlap, len(kept) - len(train))
