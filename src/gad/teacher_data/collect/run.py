"""The run: each prompt's request, parse and verdict (`make_work`), journaled by the shared runner."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import Counter
from typing import Any

from gad.api.client import chat_completion, make_client
from gad.api.errors import FATAL, PERMANENT, classify_error
from gad.api.journal import Journal
from gad.api.redaction import protect_logs, redact
from gad.api.runner import FAILED, OK, REJECTED, FatalRunError, Outcome, RunStats, pending_items, run_journaled
from gad.api.settings import api_key_from_env
from gad.api.summary import estimate_cost, summary_table
from gad.chat import with_system_prompt
from gad.teacher_data.collect.config import CollectPlan, adopt_legacy_sidecar, plan_from_config

log = logging.getLogger(__name__)

EXIT_MISSING = 3


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
