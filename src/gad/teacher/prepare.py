"""Prompt sets for distillation: read a source, filter, sample a train and a held-out test split.

`prepare(cfg)` is the body of `python src/prepare.py` (config: conf/prepare.yaml). It writes
`<out_dir>/train.jsonl` and `<out_dir>/test.jsonl` as canonical records (prompts only, unless the
source carries teacher responses) and prints a table with the count of every filter.

Sources (`source.kind`; `source.path` is a hub id or a local file/folder in the same schema):
  lmsys        lmsys/lmsys-chat-1m (gated): conversation_id, model, conversation [{content, role}],
               turn, language, openai_moderation [{categories, category_scores, flagged}], redacted
  lmsys_clean  OpenLeecher/lmsys_chat_1m_clean (English only): id, conversations
               [{from: human|gpt|system, value}], category, flaw, optional system (ShareGPT style)
  gad_release  ytz20/LMSYS-Chat-GPT-5-Chat-Response: content [{role, content}], teacher_response;
               splits train and test. Imported with its responses, its own test split kept.
  local        any JSONL/Parquet of prompts: a `messages` list, or a plain-text `prompt` column,
               optional `id` (field names configurable), optional `response`

Filters, in this order, each configurable and counted:
  malformed rows (not in the source's schema) · language (where the source has it) ·
  moderation-flagged (lmsys: openai_moderation of the kept turns; lmsys_clean: `flaw` not in
  filters.keep_flaws) · first user turn only or whole context (filters.turns) · empty prompts ·
  redacted-only prompts (nothing left once placeholders like NAME_1 are removed) · exact
  duplicates · normalised-text duplicates (NFKC, case-folded, punctuation and spacing ignored) ·
  min/max prompt tokens (a transformers tokenizer, with the chat template when it has one).

Sampling is deterministic: every kept prompt gets the key sha256(seed, normalised text); the
lowest keys form the test split, the next `sample.n` the train split. Re-runs with the same seed
give the same files; a larger `n` only adds prompts; no prompt (by normalised text) is in both.
For gad_release the release's own test split is the test split (sample.test_size caps it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gad.errors import GADError
from gad.teacher.config import plain

KINDS = ("lmsys", "lmsys_clean", "gad_release", "local")
HUB_DEFAULTS = {
    "lmsys": "lmsys/lmsys-chat-1m",
    "lmsys_clean": "OpenLeecher/lmsys_chat_1m_clean",
    "gad_release": "ytz20/LMSYS-Chat-GPT-5-Chat-Response",
}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}

# the filter names, in pipeline order (the report lists them in this order)
STEPS = (
    "malformed row",
    "language",
    "moderation flagged",
    "flaw",
    "no user turn",
    "empty prompt",
    "redacted only",
    "duplicate (exact)",
    "duplicate (normalised)",
    "too few tokens",
    "too many tokens",
)


# -------------------------------------------------------------------------------------- config
@dataclass
class PrepareConfig:
    kind: str
    path: str
    split: str
    test_split: str | None
    messages_field: str
    prompt_field: str | None
    id_field: str | None
    response_field: str | None
    out_dir: Path
    languages: list[str] | None
    turns: str
    drop_empty: bool
    drop_redacted_only: bool
    redaction_pattern: re.Pattern
    drop_flagged: bool
    keep_flaws: list[str] | None
    dedup: str
    tokenizer: str | None
    min_tokens: int | None
    max_tokens: int | None
    n: int | None
    test_size: int
    seed: int


def _int(value: Any, key: str, *, low: int, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise GADError(f"{key} must be an integer >= {low}{' or null' if allow_none else ''}, got {value!r}")
    return value


def _str_list(value: Any, key: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise GADError(f"{key} must be a string, a list of strings or null, got {value!r}")


def config_from(cfg: Any) -> PrepareConfig:
    """Validate conf/prepare.yaml values; each problem is one line naming its key."""
    c = plain(cfg)
    src = c.get("source") or {}
    filters = c.get("filters") or {}
    sample = c.get("sample") or {}
    kind = src.get("kind")
    if kind not in KINDS:
        raise GADError(f"source.kind must be one of {', '.join(KINDS)}, got {kind!r}")
    path = src.get("path") or HUB_DEFAULTS.get(kind)
    if not path:
        raise GADError("source.path must name a local file/folder (or a hub dataset id)")
    path = str(path)
    if not Path(path).exists() and not (path.count("/") == 1 and not path.endswith((".jsonl", ".json", ".parquet"))):
        raise GADError(f"source.path: no such file or folder: {path}")
    turns = filters.get("turns", "first")
    if turns not in ("first", "all"):
        raise GADError(f"filters.turns must be first or all, got {turns!r}")
    dedup = filters.get("dedup", "normalised")
    if dedup not in ("none", "exact", "normalised"):
        raise GADError(f"filters.dedup must be none, exact or normalised, got {dedup!r}")
    min_t = _int(filters.get("min_prompt_tokens"), "filters.min_prompt_tokens", low=0)
    max_t = _int(filters.get("max_prompt_tokens"), "filters.max_prompt_tokens", low=1)
    if min_t is not None and max_t is not None and min_t > max_t:
        raise GADError("filters.min_prompt_tokens must be <= filters.max_prompt_tokens")
    tokenizer = filters.get("tokenizer")
    if (min_t or max_t) and not tokenizer:
        raise GADError(
            "filters.tokenizer must name a tokenizer (path or hub id) for min/max_prompt_tokens; "
            "filters.tokenizer=whitespace counts words instead"
        )
    pattern = filters.get("redaction_pattern") or r"\b(?:NAME|EMAIL|PHONE|ADDRESS|URL|USER|ORGANIZATION|LOCATION)_\d+\b"
    try:
        redaction = re.compile(pattern)
    except re.error as err:
        raise GADError(f"filters.redaction_pattern is not a valid regular expression ({err})") from None
    out_dir = c.get("out_dir")
    if not out_dir:
        raise GADError("out_dir must name the output folder")
    seed = sample.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise GADError(f"sample.seed must be an integer, got {seed!r}")
    test_split = src.get("test_split")
    return PrepareConfig(
        kind=kind,
        path=path,
        split=str(src.get("split") or "train"),
        test_split=str(test_split) if (test_split and kind == "gad_release") else None,
        messages_field=str(src.get("messages_field") or {"lmsys": "conversation", "lmsys_clean": "conversations", "gad_release": "content"}.get(kind, "messages")),
        prompt_field=src.get("prompt_field"),
        id_field=src.get("id_field") if kind == "local" else {"lmsys": "conversation_id", "lmsys_clean": "id", "gad_release": None}[kind],
        response_field=src.get("response_field") or ("teacher_response" if kind == "gad_release" else ("response" if kind == "local" else None)),
        out_dir=Path(str(out_dir)),
        languages=_str_list(filters.get("language"), "filters.language"),
        turns=turns,
        drop_empty=bool(filters.get("drop_empty", True)),
        drop_redacted_only=bool(filters.get("drop_redacted_only", True)),
        redaction_pattern=redaction,
        drop_flagged=bool(filters.get("drop_flagged", True)),
        keep_flaws=_str_list(filters.get("keep_flaws"), "filters.keep_flaws"),
        dedup=dedup,
        tokenizer=str(tokenizer) if tokenizer else None,
        min_tokens=min_t,
        max_tokens=max_t,
        n=_int(sample.get("n"), "sample.n", low=1),
        test_size=_int(sample.get("test_size", 500), "sample.test_size", low=0, allow_none=False),  # type: ignore[arg-type]
        seed=seed,
    )


# ------------------------------------------------------------------------------------ adapters
class Skip(Exception):
    """A row dropped by a filter; `args[0]` is the step name (one of STEPS)."""


@dataclass
class Candidate:
    id: str | None
    messages: list[dict[str, str]]
    response: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    norm: str = ""
    key: str = ""


def _sharegpt(turns: Any, field_name: str) -> list[dict[str, str]]:
    if not isinstance(turns, list) or not turns:
        raise Skip("malformed row", f"'{field_name}' is not a non-empty list")
    out = []
    for t in turns:
        if not isinstance(t, Mapping):
            raise Skip("malformed row", f"'{field_name}' has a turn that is not an object")
        if "from" in t:
            role, content = SHAREGPT_ROLES.get(str(t.get("from")).lower()), t.get("value")
        else:
            role, content = t.get("role"), t.get("content")
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise Skip("malformed row", f"'{field_name}' has a turn without a known role and string content")
        out.append({"role": role, "content": content})
    return out


def _cut(messages: list[dict[str, str]], turns: str) -> list[dict[str, str]]:
    """The prompt: up to the first user turn (turns=first) or the last one (turns=all)."""
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        raise Skip("no user turn")
    end = users[0] if turns == "first" else users[-1]
    return messages[: end + 1]


def _flagged(row: Mapping[str, Any], upto: int) -> bool:
    mod = row.get("openai_moderation")
    if isinstance(mod, Mapping):
        mod = [mod]
    if not isinstance(mod, list):
        return False
    return any(isinstance(m, Mapping) and bool(m.get("flagged")) for m in mod[:upto])


def adapt(row: Any, pc: PrepareConfig) -> Candidate:
    """One raw source row -> a candidate prompt, or `Skip(step)` for the source-level filters."""
    if not isinstance(row, Mapping):
        raise Skip("malformed row", "not an object")
    meta: dict[str, Any] = {"source": pc.kind}
    response = None
    if pc.kind in ("lmsys", "lmsys_clean"):
        conv = _sharegpt(row.get(pc.messages_field), pc.messages_field)
        system = row.get("system")  # ShareGPT-style rows may carry the system prompt beside the turns
        if isinstance(system, str) and system.strip() and conv[0]["role"] != "system":
            conv = [{"role": "system", "content": system}, *conv]
        lang = row.get("language")
        if pc.languages and isinstance(lang, str) and lang.lower() not in {x.lower() for x in pc.languages}:
            raise Skip("language")
        if pc.kind == "lmsys_clean" and pc.keep_flaws is not None and "flaw" in row and row.get("flaw") not in pc.keep_flaws:
            raise Skip("flaw")
        messages = _cut(conv, pc.turns)
        if pc.drop_flagged and _flagged(row, len(messages)):
            raise Skip("moderation flagged")
        for name in ("language", "model", "category"):
            if isinstance(row.get(name), str):
                meta[name] = row[name]
    else:
        if pc.kind == "local" and pc.messages_field not in row and pc.prompt_field and pc.prompt_field in row:
            text = row.get(pc.prompt_field)
            if not isinstance(text, str):
                raise Skip("malformed row", f"'{pc.prompt_field}' is not a string")
            messages = [{"role": "user", "content": text}]
        else:
            messages = _sharegpt(row.get(pc.messages_field), pc.messages_field)
        lang = row.get("language")
        if pc.languages and isinstance(lang, str) and lang.lower() not in {x.lower() for x in pc.languages}:
            raise Skip("language")
        if pc.response_field and isinstance(row.get(pc.response_field), str) and row[pc.response_field].strip():
            response = row[pc.response_field]  # the response answers the whole context: no cut
            if messages[-1]["role"] != "user":
                raise Skip("malformed row", "messages must end with a user turn when a response is given")
        else:
            messages = _cut(messages, pc.turns)
        if pc.drop_flagged and (row.get("flagged") is True or _flagged(row, len(messages))):
            raise Skip("moderation flagged")
        if pc.kind == "gad_release":
            meta["teacher"] = "gpt-5-chat"
    rid = row.get(pc.id_field) if pc.id_field else None
    if isinstance(rid, int) and not isinstance(rid, bool):
        rid = str(rid)
    return Candidate(id=rid if isinstance(rid, str) and rid else None, messages=messages, response=response, meta=meta)


# ------------------------------------------------------------------------------------- helpers
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    """NFKC, case-folded, punctuation and spacing collapsed: the key for near-duplicates."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def prompt_text(messages: list[dict[str, str]]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def user_text(messages: list[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


class TokenCounter:
    """Prompt length in tokens: a transformers tokenizer (chat template if any) or `whitespace`."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.tok = None
        if spec == "whitespace":
            return
        try:
            from transformers import AutoTokenizer

            self.tok = AutoTokenizer.from_pretrained(spec)
        except Exception as err:  # OSError offline, ValueError for a bad folder, ...
            reason = " ".join(str(err).split())[:160]
            raise GADError(f"filters.tokenizer: cannot load tokenizer '{spec}' ({type(err).__name__}: {reason})") from None

    def count(self, batch: list[list[dict[str, str]]]) -> list[int]:
        if self.tok is None:
            return [sum(len(m["content"].split()) for m in msgs) for msgs in batch]
        if getattr(self.tok, "chat_template", None):
            texts = self.tok.apply_chat_template(batch, tokenize=False, add_generation_prompt=True)
            enc = self.tok(list(texts), add_special_tokens=False)["input_ids"]
        else:
            enc = self.tok([prompt_text(m) for m in batch])["input_ids"]
        return [len(ids) for ids in enc]


# -------------------------------------------------------------------------------------- pipeline
@dataclass
class SplitReport:
    """Counts for one input split: rows read, dropped by each step, kept."""

    name: str
    rows: int = 0
    dropped: Counter = field(default_factory=Counter)
    kept: int = 0
    examples: dict[str, str] = field(default_factory=dict)  # first malformed-row reason per step
    has_language: bool = False  # whether any row carried a language column


def _filter(rows: Iterable[tuple[str, int, Any]], pc: PrepareConfig, report: SplitReport, counter: TokenCounter | None, seen: dict[str, set]) -> list[Candidate]:
    from gad.data.records import Columns, RowError, normalise_row

    check = Columns(id=None, messages="messages", response=None, teacher=None, meta=None)
    out: list[Candidate] = []
    for where, row_no, row in rows:
        report.rows += 1
        if not report.has_language and isinstance(row, Mapping) and isinstance(row.get("language"), str):
            report.has_language = True
        try:
            if isinstance(row, RowError):
                raise Skip("malformed row", str(row))
            cand = adapt(row, pc)
            try:  # the canonical validator: roles, string contents, ends with a user turn
                normalise_row({"messages": cand.messages}, check, row_no, require_response=False)
            except RowError as err:
                raise Skip("malformed row", str(err)) from None
            text = user_text(cand.messages)
            if pc.drop_empty and not text.strip():
                raise Skip("empty prompt")
            if pc.drop_redacted_only and not normalise(pc.redaction_pattern.sub(" ", text)):
                raise Skip("redacted only")
            cand.norm = normalise(prompt_text(cand.messages))
            if pc.dedup != "none":
                exact = json.dumps(cand.messages, ensure_ascii=False)
                if exact in seen["exact"]:
                    raise Skip("duplicate (exact)")
                seen["exact"].add(exact)
                if pc.dedup == "normalised":
                    if cand.norm in seen["norm"]:
                        raise Skip("duplicate (normalised)")
                    seen["norm"].add(cand.norm)
        except Skip as skip:
            step = skip.args[0]
            report.dropped[step] += 1
            if len(skip.args) > 1 and step not in report.examples:
                report.examples[step] = f"{where} row {row_no}: {skip.args[1]}"
            continue
        out.append(cand)
    if counter is not None and (pc.min_tokens is not None or pc.max_tokens is not None):
        kept = []
        for start in range(0, len(out), 512):
            batch = out[start : start + 512]
            for cand, n in zip(batch, counter.count([c.messages for c in batch])):
                if pc.min_tokens is not None and n < pc.min_tokens:
                    report.dropped["too few tokens"] += 1
                elif pc.max_tokens is not None and n > pc.max_tokens:
                    report.dropped["too many tokens"] += 1
                else:
                    cand.meta["prompt_tokens"] = n
                    kept.append(cand)
        out = kept
    report.kept = len(out)
    return out


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


def check_hub(dataset_id: str, timeout_s: float = 3.0) -> None:
    """Fail at once, in one line, when a hub dataset cannot be reached (instead of ~20 s of retries)."""
    import socket
    from urllib.parse import urlparse

    hint = "download it elsewhere and pass the local copy as source.path"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") or os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise GADError(f"source.path '{dataset_id}' is a hub dataset id, but the Hugging Face hub is offline (HF_HUB_OFFLINE=1); {hint}")
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as err:
        raise GADError(f"source.path '{dataset_id}' is a hub dataset id, but {host} is unreachable ({type(err).__name__}); {hint}") from None


@dataclass
class PrepareResult:
    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    reports: list[SplitReport]
    overlap_dropped: int
    not_sampled: int


def split_rows(path: str, split: str, other_splits: tuple[str, ...] = (), named_only: bool = False) -> Iterable[tuple[str, int, Any]]:
    """Raw rows of one split: a hub split, or locally the files named after the split (the hub
    layout `data/train-00000-of-00001.parquet`, or `test.jsonl`); unless `named_only`, a file or
    folder with no split in its names is the whole `split`."""
    from gad.data.records import dump_files, iter_raw_rows

    p = Path(path)
    if not p.exists():
        yield from iter_raw_rows(path, split)
        return
    if p.is_dir() and (p / "data").is_dir() and not any(f.is_file() for f in p.glob("*.parquet")):
        p = p / "data"  # a hub snapshot's root
    every = dump_files(p)
    named = [f for f in every if split_of(f.name, (split,))]
    files = named if (named or named_only) else [f for f in every if not split_of(f.name, other_splits)]
    for file in files:
        yield from iter_raw_rows(str(file), split)


def split_of(name: str, splits: tuple[str, ...]) -> bool:
    """Whether a file name belongs to one of `splits` (`train.jsonl`, `test-00000-of-00001.parquet`)."""
    return any(re.match(rf"^{re.escape(s)}(?:[-_.]|$)", name) for s in splits if s)


def run_prepare(pc: PrepareConfig) -> PrepareResult:
    """Read, filter, sample; returns the two splits and the counts (writes nothing)."""

    counter = TokenCounter(pc.tokenizer) if pc.tokenizer and (pc.min_tokens is not None or pc.max_tokens is not None) else None
    seen: dict[str, set] = {"exact": set(), "norm": set()}
    reports = []
    test_pool: list[Candidate] | None = None
    if pc.test_split:  # gad_release: the release's own test split; read first so train dedups against it
        rep = SplitReport(f"{pc.test_split} split")
        test_pool = _filter(split_rows(pc.path, pc.test_split, (pc.split,), named_only=True), pc, rep, counter, seen)
        if rep.rows == 0:
            raise GADError(f"{pc.path}: no '{pc.test_split}' split (source.test_split; null carves the test split from '{pc.split}')")
        reports.append(rep)
    rep = SplitReport(f"{pc.split} split")
    pool = _filter(split_rows(pc.path, pc.split, (pc.test_split,) if pc.test_split else ()), pc, rep, counter, seen)
    reports.insert(0, rep)
    if rep.rows == 0:
        raise GADError(f"{pc.path}: split '{pc.split}' has no rows")
    pool = _order(pool, pc.seed)
    if test_pool is not None:
        test = _order(test_pool, pc.seed)[: pc.test_size]
        rest = pool
    else:
        test, rest = pool[: pc.test_size], pool[pc.test_size :]
    test_norms = {c.norm for c in test}
    kept = [c for c in rest if c.norm not in test_norms]
    overlap = len(rest) - len(kept)
    train = kept[: pc.n] if pc.n is not None else kept
    used: set[str] = set()
    test_records = _records(test, used)
    return PrepareResult(_records(train, used), test_records, reports, overlap, len(kept) - len(train))


def report_table(pc: PrepareConfig, result: PrepareResult):
    """The rich table of every filter count."""
    from rich.table import Table

    table = Table(title=f"prepare: {pc.kind} from {pc.path}", title_justify="left")
    table.add_column("step")
    for rep in result.reports:
        table.add_column(rep.name, justify="right")
    table.add_row("rows read", *[f"{r.rows:,}" for r in result.reports])
    notes = {
        "language": "off" if not pc.languages else (None if any(r.has_language for r in result.reports) else "n/a (no language column)"),
        "moderation flagged": "off" if not pc.drop_flagged else None,
        "flaw": "off" if pc.keep_flaws is None or pc.kind != "lmsys_clean" else None,
        "empty prompt": "off" if not pc.drop_empty else None,
        "redacted only": "off" if not pc.drop_redacted_only else None,
        "duplicate (exact)": "off" if pc.dedup == "none" else None,
        "duplicate (normalised)": "off" if pc.dedup != "normalised" else None,
        "too few tokens": "off" if pc.min_tokens is None else None,
        "too many tokens": "off" if pc.max_tokens is None else None,
    }
    for step in STEPS:
        cells = []
        for r in result.reports:
            n = r.dropped.get(step, 0)
            cells.append(f"-{n:,}" if n else (notes.get(step) or "0"))
        table.add_row(f"dropped: {step}", *cells)
    table.add_row("kept after filters", *[f"{r.kept:,}" for r in result.reports])
    table.add_section()
    table.add_row("in both splits (dropped from train)", f"-{result.overlap_dropped:,}", *[""] * (len(result.reports) - 1))
    table.add_row("not sampled (beyond sample.n)", f"{result.not_sampled:,}", *[""] * (len(result.reports) - 1))
    table.add_row("[bold]train.jsonl", f"[bold]{len(result.train):,}", *[""] * (len(result.reports) - 1))
    table.add_row("[bold]test.jsonl", f"[bold]{len(result.test):,}", *[""] * (len(result.reports) - 1))
    return table


def prepare(cfg: Any) -> PrepareResult:
    """Run `python src/prepare.py`: write <out_dir>/train.jsonl and test.jsonl, print the report."""
    from rich.console import Console

    pc = config_from(cfg)
    if not Path(pc.path).exists():
        check_hub(pc.path)
    from gad.data.records import write_jsonl  # importing gad.data is slow: after the checks

    result = run_prepare(pc)
    console = Console()
    console.print(report_table(pc, result))
    for step, example in sorted(next(iter([r.examples for r in result.reports]), {}).items()):
        console.print(f"  first '{step}': {example}")
    if not result.train and not result.test:
        raise GADError(f"{pc.path}: no prompt survived the filters (see the table above)")
    pc.out_dir.mkdir(parents=True, exist_ok=True)
    for name, records in (("train", result.train), ("test", result.test)):
        tmp = pc.out_dir / f".{name}.jsonl.tmp"
        write_jsonl(records, tmp)
        os.replace(tmp, pc.out_dir / f"{name}.jsonl")
    console.print(f"wrote {pc.out_dir / 'train.jsonl'} ({len(result.train):,}) and {pc.out_dir / 'test.jsonl'} ({len(result.test):,})")
    return result
