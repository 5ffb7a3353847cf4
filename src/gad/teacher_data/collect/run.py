"""The run: each (prompt, teacher) pair's request, parse and verdict (`make_work`), journaled by the shared runner.

Output and sidecar are keyed by (id, teacher) (`KEY`): one record per pair, so several teachers share one
dump and one exactly-once run. Lines written before the teacher joined the key (sidecar lines carry no
`teacher`) count for the run's teacher when it has one, and are otherwise left as they are."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

from gad.api.client import chat_completion, make_client
from gad.api.errors import FATAL, PERMANENT, classify_error
from gad.api.journal import Journal
from gad.api.redaction import protect_logs, redact
from gad.api.runner import FAILED, OK, REJECTED, FatalRunError, Outcome, RunStats, run_journaled
from gad.api.settings import api_key_from_env
from gad.api.summary import estimate_cost, summary_table
from gad.chat import with_system_prompt
from gad.teacher_data.collect.config import CollectPlan, TeacherConfig, adopt_legacy_sidecar, plan_from_config

log = logging.getLogger(__name__)

EXIT_MISSING = 3
KEY = ("id", "teacher")  # the output's and the sidecar's journal key: one record per (prompt, teacher)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def make_work(plan: CollectPlan, client: Any, secrets: list[str], spec: TeacherConfig | None = None):
    """The per-prompt coroutine: ask the teacher `spec` (default: the plan's first), judge the answer,
    return an `Outcome` whose record carries the prompt's id and the teacher's label."""
    spec = spec or plan.teacher
    where = spec.base_url or "the OpenAI API"
    params = spec.params

    async def work(prompt: dict[str, Any]) -> Outcome:
        messages = with_system_prompt(prompt["messages"], spec.system_prompt)  # (own system turns win)

        def failure(status: str, kind: str, detail: str, reply: Any = None, retries: int = 0) -> Outcome:
            rec: dict[str, Any] = {
                "id": prompt["id"],
                "teacher": spec.label,
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
            "teacher": spec.label,
            "meta": meta,
        }
        return Outcome(OK, record, None, reply.prompt_tokens, reply.completion_tokens, r)

    return work


class _SummedCounts(Mapping):
    """The retry counters of several clients, read as one (the progress bar and summary read it live)."""

    def __init__(self, counters: list[Mapping[str, int]]) -> None:
        self.counters = counters

    def _sum(self) -> Counter:
        return sum((Counter(c) for c in self.counters), Counter())

    def __getitem__(self, key: str) -> int:
        return self._sum()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sum())

    def __len__(self) -> int:
        return len(self._sum())


async def _run(plan: CollectPlan, todo: list[dict[str, Any]], out: Journal, side: Journal, keys: list[str]) -> RunStats:
    """Every pending (prompt, teacher) pair through its teacher's own client, each teacher with at most its
    `concurrency` requests in flight; one runner journals them all."""
    clients = [make_client(t, k, concurrency=t.concurrency) for t, k in zip(plan.endpoints, keys)]
    try:
        works, gates = {}, {}
        for spec, client in zip(plan.endpoints, clients):
            works[spec.label] = make_work(plan, client, keys, spec)
            gates[spec.label] = asyncio.Semaphore(spec.concurrency)

        async def work(item: dict[str, Any]) -> Outcome:
            async with gates[item["teacher"]]:
                return await works[item["teacher"]](item)

        names = ", ".join(t.model for t in plan.endpoints)
        return await run_journaled(
            todo,
            work,
            output=out,
            failures=side,
            concurrency=sum(t.concurrency for t in plan.endpoints),
            retry_counts=_SummedCounts([c.retry_counts for c in clients]),
            abort_after_failures=plan.abort_after_failures,
            progress=plan.progress,
            description=f"teacher{'s' if len(clients) > 1 else ''} {names}",
            key=KEY,
        )
    finally:
        for client in clients:
            await client.close()


def _pending(
    prompts: list[dict[str, Any]], plan: CollectPlan, out: Journal, side: Journal
) -> tuple[list[dict[str, Any]], set[tuple[str, str]], set[tuple[str, str]]]:
    """The (prompt, teacher) items still to send, and the pairs already answered and already rejected.

    With one teacher, a record without `teacher` (a sidecar line of an earlier version, a dump written by
    another tool) counts as that teacher's, as it always did."""
    single = len(plan.endpoints) == 1
    answered, rejected, todo = set(), set(), []
    for prompt in prompts:
        for spec in plan.endpoints:
            pair = (prompt["id"], spec.label)
            legacy = (prompt["id"], None)
            if pair in out.keys or (single and legacy in out.keys):
                answered.add(pair)
                continue
            status = (side.index.get(pair) or (side.index.get(legacy) if single else None) or {}).get("status")
            if status == REJECTED:
                rejected.add(pair)
                if not plan.retry_rejected:
                    continue
            todo.append({**prompt, "teacher": spec.label})
    return todo, answered, rejected


def _read_prompts(plan: CollectPlan) -> list[dict[str, Any]]:
    """The prompts, one per id: a dump with several teachers' responses per prompt also serves as prompts."""
    from gad.data.records import Columns, read_records  # importing gad.data is slow: only when needed

    records, _ = read_records(plan.prompts, Columns(response=None), split=plan.prompts_split, require_response=False)
    prompts, seen = [], set()
    for r in records:
        if r["id"] not in seen:
            seen.add(r["id"])
            prompts.append({k: v for k, v in r.items() if k != "teacher"})
    return prompts[: plan.limit] if plan.limit is not None else prompts


def collect(cfg: Any) -> int:
    """Run a collection (see module doc); returns the exit status (0 done, 3 something missing)."""
    from rich.console import Console

    plan = plan_from_config(cfg)
    where = ["teacher"] if not plan.teachers else [f"teachers[{i}]" for i in range(len(plan.endpoints))]
    keys = [api_key_from_env(t, w) for t, w in zip(plan.endpoints, where)]
    protect_logs(keys)
    console = Console()
    prompts = _read_prompts(plan)
    ids = {p["id"] for p in prompts}
    labels = [t.label for t in plan.endpoints]
    pairs = len(ids) * len(labels)

    moved = adopt_legacy_sidecar(plan.output_path, plan.failures_path)
    if moved is not None:
        console.print(
            f"renamed {moved} to {plan.failures_path} (sidecars no longer end in .jsonl, so they never load as data)"
        )
    fsync = plan.fsync_interval_s
    with (
        Journal(plan.output_path, key=KEY, fsync_interval_s=fsync, index_fields=("teacher",)) as out,
        Journal(plan.failures_path, key=KEY, fsync_interval_s=fsync, index_fields=("status", "reason")) as side,
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
        others = Counter(t for (i, t) in out.keys if i in ids and t is not None and t not in labels)
        if others:
            console.print(
                f"[yellow]{plan.output_path} also holds answers from other teachers "
                f"({', '.join(f'{t}: {n:,}' for t, n in others.items())}); they are kept, and this run adds "
                f"{', '.join(labels)}'s"
            )
        todo, answered_before, rejected_before = _pending(prompts, plan, out, side)
        console.print(
            f"collect: {len(prompts):,} prompts from {plan.prompts}"
            + (f" x {len(labels)} teachers = {pairs:,} pairs" if len(labels) > 1 else "")
            + f"; {len(answered_before):,} already answered, {len(rejected_before):,} already rejected; "
            f"sending {len(todo):,} to "
            + ", ".join(
                f"{t.model} at {t.base_url or 'the OpenAI API'} (concurrency {t.concurrency})" for t in plan.endpoints
            )
        )
        log.info(
            "collect: %d prompts x %d teachers, %d to send, output %s",
            len(prompts),
            len(labels),
            len(todo),
            plan.output_path,
        )
        stats = RunStats(total=len(todo))
        error: BaseException | None = None
        try:
            if todo:
                stats = asyncio.run(_run(plan, todo, out, side, keys))
        except (FatalRunError, KeyboardInterrupt) as err:
            error = err
            stats = getattr(err, "run_stats", stats)
        # keep the sidecar to what is still true: the latest entry of pairs with no answer (a line without a
        # teacher, from an earlier version: while its prompt has no answer at all)
        answered_ids = {i for (i, _t) in out.keys}
        side.compact(
            lambda r: (
                (r.get("id"), r.get("teacher")) not in out.keys
                and (r.get("teacher") is not None or r.get("id") not in answered_ids)
            )
        )
        single = len(labels) == 1
        answered, reasons = 0, []
        for i in ids:
            for t in labels:
                if (i, t) in out.keys or (single and (i, None) in out.keys):
                    answered += 1
                elif (entry := side.index.get((i, t)) or (side.index.get((i, None)) if single else None)) is not None:
                    reasons.append(entry)
        rejected = Counter(e["reason"] for e in reasons if e["status"] == REJECTED)
        failed = Counter(e["reason"] for e in reasons if e["status"] == FAILED)
        missing = pairs - answered - sum(rejected.values())

    prices = [(t.price_in_per_mtok, t.price_out_per_mtok) for t in plan.endpoints]
    cost = estimate_cost(stats.tokens_in, stats.tokens_out, *prices[0]) if len(set(prices)) == 1 else None
    unit = "prompts" if len(labels) == 1 else "(prompt, teacher) pairs"
    extra = [
        ("output", f"{plan.output_path}: {answered:,} of {pairs:,} {unit} answered"),
        (
            "sidecar",
            f"{plan.failures_path}: {sum(rejected.values()):,} rejected ({', '.join(f'{k} {v}' for k, v in rejected.most_common()) or '-'}), "
            f"{sum(failed.values()):,} failed ({', '.join(f'{k} {v}' for k, v in failed.most_common()) or '-'})",
        ),
        ("still missing", f"{missing:,}" + (" (re-run the same command to send them)" if missing else "")),
    ]
    title = ", ".join(t.model for t in plan.endpoints)
    console.print(summary_table(stats, title=f"collect summary ({title})", cost=cost, extra_rows=extra))
    log.info(
        "collect summary: answered %d/%d, rejected %d, missing %d, tokens %d/%d",
        answered,
        pairs,
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
