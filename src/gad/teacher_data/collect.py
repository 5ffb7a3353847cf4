"""Collect black-box teacher responses: one canonical record per prompt, nothing lost, nothing twice.

`collect(cfg)` is the body of `python src/collect.py` (config: conf/collect.yaml, conf/teacher/).
It reads the prompts (canonical records, `read_records`), skips what the output and its sidecar
already hold, sends the rest through one long-lived client (`gad.api`) with at most
`teacher.concurrency` requests in flight, and journals each outcome the moment it is known:

  output   <output>                       one canonical record per answered prompt:
           {id, messages, response, teacher, meta: {..prompt meta, finish_reason, usage}}
  sidecar  <output>.failures              one line per prompt that has no usable answer (JSONL; not a
                                          dump suffix, so a data folder never trains on it):
           {id, status: rejected|failed, reason, detail, attempts, response?, messages, time}

rejected = refusal (pattern or the API's `refusal` field), content_filter, truncated
           (finish_reason "length", unless keep_truncated), invalid_request (400/422).
           Not re-sent by a re-run unless `retry_rejected=true`.
failed   = timeout, connection, rate_limited, server_error, malformed, empty, after the
           client's retries. A re-run sends them again.
A rejected key, an exhausted quota or an unknown model stops the run at once (exit 2, one line).

Exit status: 0 when every prompt is answered or rejected; 3 when some are still missing
(failed, or never sent): re-run the same command to send exactly those.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from gad.api.client import chat_completion, make_client
from gad.api.errors import FATAL, PERMANENT, classify_error
from gad.api.journal import Journal
from gad.api.redaction import protect_logs, redact
from gad.api.runner import FAILED, OK, REJECTED, FatalRunError, Outcome, RunStats, pending_items, run_journaled
from gad.api.settings import ClientSettings, api_key_from_env
from gad.api.summary import estimate_cost, summary_table
from gad.chat import NONE, TEMPLATE_DEFAULT, system_prompt_sent, with_system_prompt
from gad.config.typed import finite, require, typed
from gad.errors import GADError

log = logging.getLogger(__name__)

EXIT_MISSING = 3
ENTRY_ONLY = ("paths", "hydra", "task_name")  # keys of the entry config that are not collect's own

DEFAULT_REFUSAL_PATTERNS = (
    r"^(?:I'm|I am) sorry,? (?:but )?(?:I|we) (?:can(?:not|'t)|won't|am unable|'m unable|am not able|'m not able)",
    r"^(?:Sorry|I apologi[sz]e),? (?:but )?I (?:can(?:not|'t)|won't|am unable|'m unable)",
    r"^I (?:can(?:not|'t)|won't|will not) (?:help(?! but)|assist|comply|provide|do that|fulfil|fulfill|support|create|write|engage)",
    r"^(?:I'm|I am) (?:unable|not able) to (?:help|assist|comply|provide|fulfil|fulfill)",
    r"^As an AI(?: language model)?, I (?:can(?:not|'t)|am unable|won't) (?:help|assist|comply|provide|fulfil|fulfill|create|write|engage)",
)


class RefusalDetector:
    """Case-insensitive regexes matched at the start of a response (curly quotes folded)."""

    def __init__(self, patterns: list[str] | tuple[str, ...], scan_chars: int = 300, enabled: bool = True) -> None:
        self.enabled = enabled
        self.scan_chars = scan_chars
        self.patterns = [re.compile(p, re.IGNORECASE) for p in patterns]

    def __call__(self, text: str) -> bool:
        if not self.enabled or not text:
            return False
        head = text[: self.scan_chars].replace("\u2019", "'").replace("\u2018", "'").lstrip(' \t\n"*_#>')
        return any(p.search(head) for p in self.patterns)


# ------------------------------------------------------------------------------------- config
@dataclass
class TeacherConfig(ClientSettings):
    """A teacher endpoint (the `ClientSettings` keys) and what to ask it: conf/teacher/{openai,vllm}.yaml,
    where every key is documented."""

    model: str
    concurrency: int
    temperature: Optional[float]
    top_p: Optional[float]
    max_tokens: Optional[int]
    max_tokens_field: str
    seed: Optional[int]
    system_prompt: Optional[str]
    extra_body: dict[str, Any]
    price_in_per_mtok: Optional[float]
    price_out_per_mtok: Optional[float]

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.model.strip()), "model", self.model, "must name the model to ask (e.g. gpt-5-chat-latest)")
        self.model = self.model.strip()
        self.system_prompt = self.system_prompt or None
        require(self.concurrency >= 1, "concurrency", self.concurrency, "must be >= 1")
        t, top_p = self.temperature, self.top_p
        require(t is None or (finite(t) and 0 <= t <= 2), "temperature", t, "must be >= 0 and <= 2")
        require(top_p is None or (finite(top_p) and 0 < top_p <= 1), "top_p", top_p, "must be > 0 and <= 1")
        require(self.max_tokens is None or self.max_tokens >= 1, "max_tokens", self.max_tokens, "must be >= 1")
        require(
            self.max_tokens_field in ("max_tokens", "max_completion_tokens"),
            "max_tokens_field",
            self.max_tokens_field,
            "must be max_tokens or max_completion_tokens",
        )
        for name in ("price_in_per_mtok", "price_out_per_mtok"):
            price = getattr(self, name)
            require(price is None or (finite(price) and price >= 0), name, price, "must be >= 0")

    @property
    def params(self) -> dict[str, Any]:
        """The request fields besides model and messages (unset ones left to the server)."""
        params: dict[str, Any] = {}
        for name, value in (
            ("temperature", self.temperature),
            ("top_p", self.top_p),
            (self.max_tokens_field, self.max_tokens),
            ("seed", self.seed),
        ):
            if value is not None:
                params[name] = value
        if self.extra_body:
            params["extra_body"] = dict(self.extra_body)
        return params


@dataclass
class RefusalConfig:
    """The refusal filter (`refusal` in conf/collect.yaml, documented there); `patterns` None: the built-in set."""

    enabled: bool
    scan_chars: int
    patterns: Optional[list[str]]

    def __post_init__(self) -> None:
        require(self.scan_chars >= 1, "scan_chars", self.scan_chars, "must be >= 1")
        if self.patterns is None:
            self.patterns = list(DEFAULT_REFUSAL_PATTERNS)
        for i, pattern in enumerate(self.patterns):
            try:
                re.compile(pattern)
            except re.error as err:
                require(False, f"patterns[{i}]", pattern, f"not a valid regular expression ({err})")

    def detector(self) -> RefusalDetector:
        return RefusalDetector(self.patterns or [], scan_chars=self.scan_chars, enabled=self.enabled)


def _looks_like_hub_id(path: str) -> bool:
    # same rule as gad.data.records.is_hub_id, without importing gad.data (which loads the training stack)
    return path.count("/") == 1 and not path.endswith((".jsonl", ".json", ".parquet"))


def sidecar_path(output: Path, failures: str | None) -> Path:
    """Where permanent failures go: `failures`, or `<output>.failures` beside the output.

    Not a dump suffix: the sidecar holds refusals, and `data.path=<that folder>` must never train
    on them (gad.data.records skips `.failures` files, and the `.failures.jsonl` of earlier versions).
    """
    return Path(failures) if failures else output.with_name(f"{output.name}.failures")


def _dump_suffix(failures: str) -> bool:
    path = Path(failures)
    dump = path.suffix in (".jsonl", ".json", ".parquet", ".gz", ".bz2", ".xz")
    return dump and not path.name.endswith(".failures.jsonl")


def adopt_legacy_sidecar(output: Path, sidecar: Path) -> Path | None:
    """Rename an earlier version's `<output stem>.failures.jsonl` to the sidecar's name, so a re-run
    still knows which prompts were rejected (and never re-sends them). Returns the old path if moved."""
    legacy = output.with_name(f"{output.stem}.failures.jsonl")
    if sidecar == output.with_name(f"{output.name}.failures") and legacy.is_file() and not sidecar.exists():
        os.rename(legacy, sidecar)
        return legacy
    return None


@dataclass
class CollectPlan:
    """One collect run: conf/collect.yaml (every key documented there) with its teacher group (conf/teacher/).
    Derived: `output_path`, `failures_path` (the sidecar), `detector` (the refusal filter)."""

    prompts: str
    system_prompt: Optional[str]
    system_prompt_tokenizer: Optional[str]
    prompts_split: str
    limit: Optional[int]
    output: str
    failures: Optional[str]
    retry_rejected: bool
    keep_truncated: bool
    refusal: RefusalConfig
    abort_after_failures: int
    fsync_interval_s: float
    progress: bool
    teacher: TeacherConfig

    def __post_init__(self) -> None:
        prompts = Path(self.prompts)
        require(prompts.exists() or _looks_like_hub_id(self.prompts), "prompts", self.prompts, "no such file or folder")
        self.output_path = Path(self.output)
        require(self.output_path.suffix == ".jsonl", "output", self.output, "must be a .jsonl file")
        same = prompts.exists() and self.output_path.exists() and self.output_path.resolve() == prompts.resolve()
        require(not same, "output", self.output, "must differ from prompts")
        require(
            not (self.failures and _dump_suffix(self.failures)),
            "failures",
            self.failures,
            "a dump suffix, so a data folder holding it would train on the refusals it lists; "
            "use a name ending in .failures",
        )
        self.failures_path = sidecar_path(self.output_path, self.failures)
        require(self.limit is None or self.limit >= 1, "limit", self.limit, "must be >= 1 (null = all)")
        require(self.abort_after_failures >= 0, "abort_after_failures", self.abort_after_failures, "must be >= 0")
        require(
            finite(self.fsync_interval_s) and self.fsync_interval_s >= 0,
            "fsync_interval_s",
            self.fsync_interval_s,
            "must be >= 0",
        )
        self.detector = self.refusal.detector()

    @property
    def client(self) -> ClientSettings:
        """The connection side of the teacher config."""
        return self.teacher


def plan_from_config(cfg: Any) -> CollectPlan:
    """Check every config value up front; each problem is one line naming its key."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    if not isinstance(cfg.get("teacher"), DictConfig):
        raise GADError("teacher config group is missing (teacher=openai or teacher=vllm)")
    # the run folder's keys (paths, hydra: they only resolve inside a Hydra run) are not collect's
    plan = typed(CollectPlan, OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ENTRY_ONLY]), "")
    return _with_policy(plan)


def _with_policy(plan: CollectPlan) -> CollectPlan:
    """`plan` whose teacher sends the system prompt that `system_prompt` sends (gad.chat; training's
    data.system_prompt)."""
    policy = plan.system_prompt or NONE
    if policy == NONE:
        return plan  # (teacher.system_prompt, if set, is the explicit text)
    if plan.teacher.system_prompt:
        raise GADError(f"teacher.system_prompt and system_prompt={policy} are both set: keep one")
    tokenizer = None
    if policy == TEMPLATE_DEFAULT:
        from transformers import AutoTokenizer

        path = plan.system_prompt_tokenizer
        if not path:
            raise GADError(
                "system_prompt=template_default needs system_prompt_tokenizer=<the student's tokenizer folder or hub id>"
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as err:
            raise GADError(f"system_prompt_tokenizer: cannot load '{path}' ({type(err).__name__})") from None
    plan.teacher = dataclasses.replace(plan.teacher, system_prompt=system_prompt_sent(policy, tokenizer))
    return plan


# ------------------------------------------------------------------------------------- the work
def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def make_work(plan: CollectPlan, client: Any, secrets: list[str]):
    """The per-prompt coroutine: ask the teacher, judge the answer, return an `Outcome`."""
    spec = plan.teacher
    where = plan.client.base_url or "the OpenAI API"
    params = spec.params

    async def work(prompt: dict[str, Any]) -> Outcome:
        messages = with_system_prompt(prompt["messages"], spec.system_prompt)  # (own system turns win)

        def failure(status: str, kind: str, detail: str, reply: Any = None, retries: int = 0) -> Outcome:
            rec: dict[str, Any] = {
                "id": prompt["id"],
                "status": status,
                "reason": kind,
                "detail": detail,
                "attempts": retries + 1,
            }
            if reply is not None:
                if reply.text:
                    rec["response"] = reply.text
                rec["finish_reason"] = reply.finish_reason
            rec["messages"] = prompt["messages"]
            rec["time"] = _now()
            return Outcome(
                status,
                rec,
                kind,
                tokens_in=getattr(reply, "prompt_tokens", 0) or 0,
                tokens_out=getattr(reply, "completion_tokens", 0) or 0,
                retries=retries,
            )

        try:
            reply = await chat_completion(client, model=spec.model, messages=messages, params=params)
        except Exception as exc:  # sorted below; anything unexpected is re-raised by classify_error
            info = classify_error(exc, secrets, where=where)
            if info.scope == FATAL:
                raise FatalRunError(
                    f"{info.message}; stopped, nothing was lost: re-run the same command to resume"
                ) from None
            retries = int(getattr(exc, "gad_retries", 0))
            return failure(REJECTED if info.scope == PERMANENT else FAILED, info.kind, info.message, retries=retries)

        r = reply.retries
        if reply.finish_reason == "content_filter":
            return failure(
                REJECTED, "content_filter", "the server stopped the response with a content filter", reply, r
            )
        if reply.refusal:
            return failure(
                REJECTED, "refusal", redact(f"the API flagged a refusal: {reply.refusal}", secrets)[:300], reply, r
            )
        text = reply.text or ""
        if not text.strip():
            return failure(FAILED, "empty", f"empty response (finish_reason {reply.finish_reason})", reply, r)
        if plan.detector(text):
            return failure(REJECTED, "refusal", "the response matches a refusal pattern", reply, r)
        if reply.finish_reason == "length" and not plan.keep_truncated:
            return failure(REJECTED, "truncated", "the response hit max_tokens (finish_reason length)", reply, r)
        meta = dict(prompt.get("meta") or {})
        meta.update(
            finish_reason=reply.finish_reason,
            usage={"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens},
            system_prompt=messages[0]["content"] if messages[0]["role"] == "system" else None,  # as sent
        )
        if reply.model and reply.model != spec.model:
            meta["served_model"] = reply.model
        record = {
            "id": prompt["id"],
            "messages": prompt["messages"],
            "response": text,
            "teacher": spec.model,
            "meta": meta,
        }
        return Outcome(OK, record, None, reply.prompt_tokens, reply.completion_tokens, r)

    return work


async def _run(plan: CollectPlan, todo: list[dict[str, Any]], out: Journal, side: Journal, key: str) -> RunStats:
    client = make_client(plan.client, key, concurrency=plan.teacher.concurrency)
    try:
        return await run_journaled(
            todo,
            make_work(plan, client, [key]),
            output=out,
            failures=side,
            concurrency=plan.teacher.concurrency,
            retry_counts=client.retry_counts,
            abort_after_failures=plan.abort_after_failures,
            progress=plan.progress,
            description=f"teacher {plan.teacher.model}",
        )
    finally:
        await client.close()


def collect(cfg: Any) -> int:
    """Run a collection (see module doc); returns the exit status (0 done, 3 something missing)."""
    from rich.console import Console

    plan = plan_from_config(cfg)
    key = api_key_from_env(plan.client, "teacher")
    protect_logs([key])
    console = Console()

    from gad.data.records import Columns, read_records  # importing gad.data is slow: only when needed

    prompts, load = read_records(
        plan.prompts, Columns(response=None, teacher=None), split=plan.prompts_split, require_response=False
    )
    if plan.limit is not None:
        prompts = prompts[: plan.limit]
    ids = {p["id"] for p in prompts}

    moved = adopt_legacy_sidecar(plan.output_path, plan.failures_path)
    if moved is not None:
        console.print(
            f"renamed {moved} to {plan.failures_path} (sidecars no longer end in .jsonl, so they never load as data)"
        )
    with (
        Journal(plan.output_path, fsync_interval_s=plan.fsync_interval_s, index_fields=("teacher",)) as out,
        Journal(plan.failures_path, fsync_interval_s=plan.fsync_interval_s, index_fields=("status", "reason")) as side,
    ):
        for j in (out, side):
            if j.repaired_bytes:
                log.warning(
                    "%s: repaired a torn last line (%d bytes dropped; that prompt is sent again)",
                    j.path,
                    j.repaired_bytes,
                )
                console.print(
                    f"[yellow]repaired a torn last line in {j.path} ({j.repaired_bytes} bytes); that prompt is sent again"
                )
        others = Counter(
            v["teacher"] for k, v in out.index.items() if k in ids and v.get("teacher") != plan.teacher.model
        )
        if others:
            console.print(
                f"[yellow]{plan.output_path} already holds answers from another teacher ({', '.join(f'{t}: {n:,}' for t, n in others.items())}); "
                "they are kept and not sent again: use a new output file for a new teacher"
            )
        todo = pending_items(prompts, out, side, retry_rejected=plan.retry_rejected)
        resumed = len(prompts) - len(todo)
        console.print(
            f"collect: {len(prompts):,} prompts from {plan.prompts}; {len(out.keys & ids):,} already answered, "
            f"{resumed - len(out.keys & ids):,} already rejected; sending {len(todo):,} to {plan.teacher.model} "
            f"at {plan.client.base_url or 'the OpenAI API'} (concurrency {plan.teacher.concurrency})"
        )
        log.info("collect: %d prompts, %d to send, output %s", len(prompts), len(todo), plan.output_path)
        stats = RunStats(total=len(todo))
        error: BaseException | None = None
        try:
            if todo:
                stats = asyncio.run(_run(plan, todo, out, side, key))
        except (FatalRunError, KeyboardInterrupt) as err:
            error = err
            stats = getattr(err, "run_stats", stats)
        # keep the sidecar to what is still true: the latest entry of prompts with no answer
        side.compact(lambda r: r.get("id") not in out.keys)
        answered = len(out.keys & ids)
        rejected = Counter(
            side.index[i]["reason"] for i in ids if i in side.index and side.index[i]["status"] == REJECTED
        )
        failed = Counter(side.index[i]["reason"] for i in ids if i in side.index and side.index[i]["status"] == FAILED)
        missing = len(ids) - answered - sum(rejected.values())

    cost = estimate_cost(
        stats.tokens_in, stats.tokens_out, plan.teacher.price_in_per_mtok, plan.teacher.price_out_per_mtok
    )
    extra = [
        ("output", f"{plan.output_path}: {answered:,} of {len(ids):,} prompts answered"),
        (
            "sidecar",
            f"{plan.failures_path}: {sum(rejected.values()):,} rejected ({', '.join(f'{k} {v}' for k, v in rejected.most_common()) or '-'}), "
            f"{sum(failed.values()):,} failed ({', '.join(f'{k} {v}' for k, v in failed.most_common()) or '-'})",
        ),
        ("still missing", f"{missing:,}" + (" (re-run the same command to send them)" if missing else "")),
    ]
    console.print(summary_table(stats, title=f"collect summary ({plan.teacher.model})", cost=cost, extra_rows=extra))
    log.info(
        "collect summary: answered %d/%d, rejected %d, missing %d, tokens %d/%d",
        answered,
        len(ids),
        sum(rejected.values()),
        missing,
        stats.tokens_in,
        stats.tokens_out,
    )
    if isinstance(error, KeyboardInterrupt):
        console.print("[yellow]interrupted: everything received so far is saved; re-run the same command to resume")
        return 130
    if error is not None:
        raise error
    return EXIT_MISSING if missing else 0
