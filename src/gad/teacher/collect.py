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
import datetime as dt
import logging
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gad.api.client import (
    FATAL,
    PERMANENT,
    ClientSettings,
    api_key_from_env,
    chat_completion,
    classify_error,
    make_client,
    protect_logs,
    redact,
)
from gad.api.journal import Journal
from gad.api.runner import FAILED, OK, REJECTED, FatalRunError, Outcome, RunStats, pending_items, run_journaled
from gad.api.summary import estimate_cost, summary_table
from gad.chat import NONE, TEMPLATE_DEFAULT, system_prompt_sent, with_system_prompt
from gad.errors import GADError
from gad.teacher.config import plain

log = logging.getLogger(__name__)

EXIT_MISSING = 3

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
        compiled = []
        for i, p in enumerate(patterns):
            try:
                compiled.append(re.compile(p, re.IGNORECASE))
            except re.error as err:
                raise GADError(f"refusal.patterns[{i}] is not a valid regular expression ({err})") from None
        self.patterns = compiled

    def __call__(self, text: str) -> bool:
        if not self.enabled or not text:
            return False
        head = text[: self.scan_chars].replace("\u2019", "'").replace("\u2018", "'").lstrip(" \t\n\"*_#>")
        return any(p.search(head) for p in self.patterns)


# ------------------------------------------------------------------------------------- config
@dataclass
class TeacherSpec:
    """The request side of the teacher config (the connection side is `ClientSettings`)."""

    model: str
    concurrency: int
    params: dict[str, Any]
    system_prompt: str | None
    price_in_per_mtok: float | None
    price_out_per_mtok: float | None


def _opt_number(cfg: Mapping[str, Any], name: str, key: str, *, low: float, high: float | None = None, integer: bool = False, strict_low: bool = False):
    value = cfg.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise GADError(f"{key} must be {'an integer' if integer else 'a number'} or null, got {value!r}")
    if (value <= low) if strict_low else (value < low):
        raise GADError(f"{key} must be {'>' if strict_low else '>='} {low:g}, got {value!r}")
    if high is not None and value > high:
        raise GADError(f"{key} must be <= {high:g}, got {value!r}")
    return int(value) if integer else float(value)


def teacher_spec(cfg: Mapping[str, Any], prefix: str = "teacher") -> TeacherSpec:
    """Validate the sampling/request part of a teacher config; errors name `prefix.key`."""
    model = cfg.get("model")
    if not isinstance(model, str) or not model.strip():
        raise GADError(f"{prefix}.model must name the model to ask (e.g. {prefix}.model=gpt-5-chat-latest)")
    concurrency = cfg.get("concurrency")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise GADError(f"{prefix}.concurrency must be an integer >= 1, got {concurrency!r}")
    params: dict[str, Any] = {}
    temperature = _opt_number(cfg, "temperature", f"{prefix}.temperature", low=0.0, high=2.0)
    top_p = _opt_number(cfg, "top_p", f"{prefix}.top_p", low=0.0, high=1.0, strict_low=True)
    max_tokens = _opt_number(cfg, "max_tokens", f"{prefix}.max_tokens", low=1, integer=True)
    seed = _opt_number(cfg, "seed", f"{prefix}.seed", low=-(2**63), integer=True)
    field = str(cfg.get("max_tokens_field") or "max_tokens")
    if field not in ("max_tokens", "max_completion_tokens"):
        raise GADError(f"{prefix}.max_tokens_field must be max_tokens or max_completion_tokens, got {field!r}")
    if temperature is not None:
        params["temperature"] = temperature
    if top_p is not None:
        params["top_p"] = top_p
    if max_tokens is not None:
        params[field] = max_tokens
    if seed is not None:
        params["seed"] = seed
    extra = cfg.get("extra_body") or {}
    if not isinstance(extra, Mapping):
        raise GADError(f"{prefix}.extra_body must be a mapping of extra request fields")
    if extra:
        params["extra_body"] = dict(extra)
    system_prompt = cfg.get("system_prompt")
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise GADError(f"{prefix}.system_prompt must be a string or null")
    return TeacherSpec(
        model=model.strip(),
        concurrency=concurrency,
        params=params,
        system_prompt=system_prompt or None,
        price_in_per_mtok=_opt_number(cfg, "price_in_per_mtok", f"{prefix}.price_in_per_mtok", low=0.0),
        price_out_per_mtok=_opt_number(cfg, "price_out_per_mtok", f"{prefix}.price_out_per_mtok", low=0.0),
    )


def _looks_like_hub_id(path: str) -> bool:
    # same rule as gad.data.records.is_hub_id, without importing gad.data (which loads the training stack)
    return path.count("/") == 1 and not path.endswith((".jsonl", ".json", ".parquet"))


def sidecar_path(output: Path, failures: str | None) -> Path:
    """Where permanent failures go: `failures`, or `<output>.failures` beside the output.

    Not a dump suffix: the sidecar holds refusals, and `data.path=<that folder>` must never train
    on them (gad.data.records skips `.failures` files, and the `.failures.jsonl` of earlier versions).
    """
    if failures:
        path = Path(failures)
        if path.suffix in (".jsonl", ".json", ".parquet", ".gz", ".bz2", ".xz") and not path.name.endswith(".failures.jsonl"):
            raise GADError(f"failures={failures}: a dump suffix, so a data folder holding it would train on the refusals "
                           "it lists; use a name ending in .failures")
        return path
    return output.with_name(f"{output.name}.failures")


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
    """Validated settings for one collect run."""

    prompts: str
    prompts_split: str
    output: Path
    failures: Path
    limit: int | None
    retry_rejected: bool
    keep_truncated: bool
    refusal: RefusalDetector
    abort_after_failures: int
    fsync_interval_s: float
    progress: bool
    client: ClientSettings
    teacher: TeacherSpec


def plan_from_config(cfg: Any) -> CollectPlan:
    """Check every config value up front; each problem is one line naming its key."""
    c = plain(cfg)
    prompts = c.get("prompts")
    if not prompts or prompts == "???":
        raise GADError("prompts must name the prompts file (prompts=<file.jsonl>)")
    prompts = str(prompts)
    if not Path(prompts).exists() and not _looks_like_hub_id(prompts):
        raise GADError(f"prompts: no such file or folder: {prompts}")
    output = c.get("output")
    if not output or output == "???":
        raise GADError("output must name the output file (output=<file.jsonl>)")
    output_path = Path(str(output))
    if output_path.suffix != ".jsonl":
        raise GADError(f"output must be a .jsonl file, got {output_path}")
    if Path(prompts).exists() and output_path.exists() and output_path.resolve() == Path(prompts).resolve():
        raise GADError("output must differ from prompts")
    teacher_cfg = c.get("teacher")
    if not isinstance(teacher_cfg, Mapping):
        raise GADError("teacher config group is missing (teacher=openai or teacher=vllm)")
    limit = c.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise GADError(f"limit must be a positive integer or null, got {limit!r}")
    abort = c.get("abort_after_failures", 50)
    if isinstance(abort, bool) or not isinstance(abort, int) or abort < 0:
        raise GADError(f"abort_after_failures must be an integer >= 0, got {abort!r}")
    fsync = c.get("fsync_interval_s", 1.0)
    if isinstance(fsync, bool) or not isinstance(fsync, (int, float)) or fsync < 0:
        raise GADError(f"fsync_interval_s must be a number >= 0, got {fsync!r}")
    ref = c.get("refusal") or {}
    patterns = ref.get("patterns")
    if patterns is None:
        patterns = list(DEFAULT_REFUSAL_PATTERNS)
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise GADError("refusal.patterns must be a list of regular expressions")
    scan = ref.get("scan_chars", 300)
    if isinstance(scan, bool) or not isinstance(scan, int) or scan < 1:
        raise GADError(f"refusal.scan_chars must be an integer >= 1, got {scan!r}")
    return CollectPlan(
        prompts=prompts,
        prompts_split=str(c.get("prompts_split") or "train"),
        output=output_path,
        failures=sidecar_path(output_path, c.get("failures")),
        limit=limit,
        retry_rejected=bool(c.get("retry_rejected", False)),
        keep_truncated=bool(c.get("keep_truncated", False)),
        refusal=RefusalDetector(patterns, scan_chars=scan, enabled=bool(ref.get("enabled", True))),
        abort_after_failures=abort,
        fsync_interval_s=float(fsync),
        progress=bool(c.get("progress", True)),
        client=ClientSettings.from_config(teacher_cfg, prefix="teacher"),
        teacher=_with_policy(teacher_spec(teacher_cfg, prefix="teacher"), c),
    )


def _with_policy(spec: TeacherSpec, c: Mapping[str, Any]) -> TeacherSpec:
    """`spec` with the system prompt that `system_prompt` (gad.chat; training's data.system_prompt) sends."""
    policy = str(c.get("system_prompt") or NONE)
    if policy == NONE:
        return spec  # (teacher.system_prompt, if set, is the explicit text)
    if spec.system_prompt:
        raise GADError(f"teacher.system_prompt and system_prompt={policy} are both set: keep one")
    tokenizer = None
    if policy == TEMPLATE_DEFAULT:
        from transformers import AutoTokenizer

        path = c.get("system_prompt_tokenizer")
        if not path:
            raise GADError("system_prompt=template_default needs system_prompt_tokenizer=<the student's tokenizer folder or hub id>")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as err:
            raise GADError(f"system_prompt_tokenizer: cannot load '{path}' ({type(err).__name__})") from None
    spec.system_prompt = system_prompt_sent(policy, tokenizer)
    return spec


# ------------------------------------------------------------------------------------- the work
def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def make_work(plan: CollectPlan, client: Any, secrets: list[str]):
    """The per-prompt coroutine: ask the teacher, judge the answer, return an `Outcome`."""
    spec = plan.teacher
    where = plan.client.base_url or "the OpenAI API"

    async def work(prompt: dict[str, Any]) -> Outcome:
        messages = with_system_prompt(prompt["messages"], spec.system_prompt)  # (own system turns win)

        def failure(status: str, kind: str, detail: str, reply: Any = None, retries: int = 0) -> Outcome:
            rec: dict[str, Any] = {"id": prompt["id"], "status": status, "reason": kind, "detail": detail, "attempts": retries + 1}
            if reply is not None:
                if reply.text:
                    rec["response"] = reply.text
                rec["finish_reason"] = reply.finish_reason
            rec["messages"] = prompt["messages"]
            rec["time"] = _now()
            return Outcome(
                status, rec, kind,
                tokens_in=getattr(reply, "prompt_tokens", 0) or 0,
                tokens_out=getattr(reply, "completion_tokens", 0) or 0,
                retries=retries,
            )

        try:
            reply = await chat_completion(client, model=spec.model, messages=messages, params=spec.params)
        except Exception as exc:  # sorted below; anything unexpected is re-raised by classify_error
            info = classify_error(exc, secrets, where=where)
            if info.scope == FATAL:
                raise FatalRunError(f"{info.message}; stopped, nothing was lost: re-run the same command to resume") from None
            retries = int(getattr(exc, "gad_retries", 0))
            return failure(REJECTED if info.scope == PERMANENT else FAILED, info.kind, info.message, retries=retries)

        r = reply.retries
        if reply.finish_reason == "content_filter":
            return failure(REJECTED, "content_filter", "the server stopped the response with a content filter", reply, r)
        if reply.refusal:
            return failure(REJECTED, "refusal", redact(f"the API flagged a refusal: {reply.refusal}", secrets)[:300], reply, r)
        text = reply.text or ""
        if not text.strip():
            return failure(FAILED, "empty", f"empty response (finish_reason {reply.finish_reason})", reply, r)
        if plan.refusal(text):
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
        record = {"id": prompt["id"], "messages": prompt["messages"], "response": text, "teacher": spec.model, "meta": meta}
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
    key = api_key_from_env(plan.client)
    protect_logs([key])
    console = Console()

    from gad.data.records import Columns, read_records  # importing gad.data is slow: only when needed

    prompts, load = read_records(plan.prompts, Columns(response=None, teacher=None), split=plan.prompts_split, require_response=False)
    if plan.limit is not None:
        prompts = prompts[: plan.limit]
    ids = {p["id"] for p in prompts}

    moved = adopt_legacy_sidecar(plan.output, plan.failures)
    if moved is not None:
        console.print(f"renamed {moved} to {plan.failures} (sidecars no longer end in .jsonl, so they never load as data)")
    with Journal(plan.output, fsync_interval_s=plan.fsync_interval_s, index_fields=("teacher",)) as out, Journal(
        plan.failures, fsync_interval_s=plan.fsync_interval_s, index_fields=("status", "reason")
    ) as side:
        for j in (out, side):
            if j.repaired_bytes:
                log.warning("%s: repaired a torn last line (%d bytes dropped; that prompt is sent again)", j.path, j.repaired_bytes)
                console.print(f"[yellow]repaired a torn last line in {j.path} ({j.repaired_bytes} bytes); that prompt is sent again")
        others = Counter(v["teacher"] for k, v in out.index.items() if k in ids and v.get("teacher") != plan.teacher.model)
        if others:
            console.print(
                f"[yellow]{plan.output} already holds answers from another teacher ({', '.join(f'{t}: {n:,}' for t, n in others.items())}); "
                "they are kept and not sent again: use a new output file for a new teacher"
            )
        todo = pending_items(prompts, out, side, retry_rejected=plan.retry_rejected)
        resumed = len(prompts) - len(todo)
        console.print(
            f"collect: {len(prompts):,} prompts from {plan.prompts}; {len(out.keys & ids):,} already answered, "
            f"{resumed - len(out.keys & ids):,} already rejected; sending {len(todo):,} to {plan.teacher.model} "
            f"at {plan.client.base_url or 'the OpenAI API'} (concurrency {plan.teacher.concurrency})"
        )
        log.info("collect: %d prompts, %d to send, output %s", len(prompts), len(todo), plan.output)
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
        rejected = Counter(side.index[i]["reason"] for i in ids if i in side.index and side.index[i]["status"] == REJECTED)
        failed = Counter(side.index[i]["reason"] for i in ids if i in side.index and side.index[i]["status"] == FAILED)
        missing = len(ids) - answered - sum(rejected.values())

    cost = estimate_cost(stats.tokens_in, stats.tokens_out, plan.teacher.price_in_per_mtok, plan.teacher.price_out_per_mtok)
    extra = [
        ("output", f"{plan.output}: {answered:,} of {len(ids):,} prompts answered"),
        ("sidecar", f"{plan.failures}: {sum(rejected.values()):,} rejected ({', '.join(f'{k} {v}' for k, v in rejected.most_common()) or '-'}), "
                    f"{sum(failed.values()):,} failed ({', '.join(f'{k} {v}' for k, v in failed.most_common()) or '-'})"),
        ("still missing", f"{missing:,}" + (" (re-run the same command to send them)" if missing else "")),
    ]
    console.print(summary_table(stats, title=f"collect summary ({plan.teacher.model})", cost=cost, extra_rows=extra))
    log.info("collect summary: answered %d/%d, rejected %d, missing %d, tokens %d/%d", answered, len(ids), sum(rejected.values()), missing, stats.tokens_in, stats.tokens_out)
    if isinstance(error, KeyboardInterrupt):
        console.print("[yellow]interrupted: everything received so far is saved; re-run the same command to resume")
        return 130
    if error is not None:
        raise error
    return EXIT_MISSING if missing else 0
