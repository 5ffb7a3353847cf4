"""Bounded-concurrency runner: send many items through one async client, journal every outcome.

    stats = asyncio.run(run_journaled(
        items,                       # dicts with an "id"; already filtered by `pending_items`
        work,                        # async (item) -> Outcome; raise FatalRunError to stop the run
        output=out_journal,          # Journal for status "ok" records
        failures=sidecar_journal,    # Journal for "rejected"/"failed" records (with their reason)
        concurrency=64,
        retry_counts=client.retry_counts,   # shown in the progress bar and summary
        progress=True, description="teacher",
    ))

Outcomes
  ok        the record goes to `output`
  rejected  the server answered but the answer is unusable for good (refusal, content filter,
            truncated, invalid request); recorded in `failures` and not re-sent by a re-run unless
            the caller asks (`pending_items(..., retry_rejected=True)`)
  failed    no usable answer this time (timeout, connection, rate limited, server error,
            malformed or empty reply) after the client's retries; recorded in `failures`, and a
            re-run sends it again
Every outcome is journaled the moment it is known, so a killed run loses only requests in flight.

Concurrency: exactly `concurrency` worker coroutines pull from one iterator, so there are never
more requests in flight and no task per item is created up front (fine for millions of items).
A `FatalRunError` from `work` (rejected key, exhausted quota, ...) cancels the in-flight requests
(not journaled, so a re-run sends them) and propagates as a one-line `GADError`. After
`abort_after_failures` consecutive failed items the run stops the same way (server down).
`KeyboardInterrupt`/SIGTERM: records already journaled stay; a re-run resumes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gad.api.journal import Journal, Key, record_key
from gad.errors import GADError

OK, REJECTED, FAILED = "ok", "rejected", "failed"


class FatalRunError(GADError):
    """Stop the whole run now (rejected key, exhausted quota, unknown model, server down)."""


@dataclass
class Outcome:
    """The result of one item. `record` is what gets journaled (it must carry the item's id)."""

    status: str  # ok | rejected | failed
    record: dict[str, Any]
    kind: str | None = None  # reason label for rejected/failed, e.g. "refusal", "timeout"
    tokens_in: int = 0
    tokens_out: int = 0
    retries: int = 0


@dataclass
class RunStats:
    """Counts for one run of `run_journaled` (this process only)."""

    total: int = 0  # items handed to the runner
    ok: int = 0
    rejected: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    retried: Counter = field(default_factory=Counter)  # retries by kind, from the client
    items_retried: int = 0  # items that needed at least one retry
    tokens_in: int = 0
    tokens_out: int = 0
    elapsed_s: float = 0.0
    stopped: str | None = None  # why the run stopped early, if it did

    @property
    def done(self) -> int:
        return self.ok + sum(self.rejected.values()) + sum(self.failed.values())

    @property
    def rate(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def errors_line(self) -> str:
        """`refusal 2 · timeout 1 · retry:rate_limited 3` for the progress bar."""
        parts = [f"{k} {v}" for k, v in (self.rejected + self.failed).most_common()]
        parts += [f"retry:{k} {v}" for k, v in self.retried.most_common()]
        return " · ".join(parts) if parts else "no errors"


def pending_items(
    items: Iterable[dict[str, Any]],
    output: Journal,
    failures: Journal | None = None,
    *,
    retry_rejected: bool = False,
    key: Key = "id",
) -> list[dict[str, Any]]:
    """The items a (re-)run still has to send: not in `output`, and not rejected in `failures`
    (unless `retry_rejected`). `failures` must index the field "status". `key`: the journals' key
    (a field, or several: `gad.api.journal.record_key`)."""
    out = []
    for item in items:
        k = record_key(item, key)
        if k in output.keys:
            continue
        if failures is not None and not retry_rejected:
            if failures.index.get(k, {}).get("status") == REJECTED:
                continue
        out.append(item)
    return out


class _Progress:
    """A rich progress bar with req/s, tokens, errors by kind and ETA (on stderr)."""

    def __init__(self, total: int, description: str, enabled: bool) -> None:
        self.enabled = enabled and total > 0
        self._last = 0.0
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.1f} req/s"),
            TextColumn("tok {task.fields[tok_in]:,} in / {task.fields[tok_out]:,} out"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[errors]}"),
            console=Console(stderr=True),
            refresh_per_second=4,
            transient=False,
        )
        self.task = self.progress.add_task(description, total=total, rate=0.0, tok_in=0, tok_out=0, errors="")
        self.progress.start()

    def update(self, stats: RunStats, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        self.progress.update(
            self.task,
            completed=stats.done,
            rate=stats.rate,
            tok_in=stats.tokens_in,
            tok_out=stats.tokens_out,
            errors=stats.errors_line(),
        )

    def stop(self) -> None:
        if self.enabled:
            self.progress.stop()


async def run_journaled(
    items: Iterable[dict[str, Any]],
    work: Callable[[dict[str, Any]], Awaitable[Outcome]],
    *,
    output: Journal,
    failures: Journal,
    concurrency: int,
    total: int | None = None,
    retry_counts: Mapping[str, int] | None = None,
    abort_after_failures: int = 0,
    progress: bool = True,
    description: str = "requests",
    key: Key = "id",
) -> RunStats:
    """Run `work` over `items` with at most `concurrency` in flight, journaling each outcome."""
    if concurrency < 1:
        raise GADError("concurrency must be >= 1")
    items = list(items) if total is None else items
    stats = RunStats(total=total if total is not None else len(items))  # type: ignore[arg-type]
    bar = _Progress(stats.total, description, progress)
    iterator = iter(items)
    start = time.monotonic()
    fatal: list[BaseException] = []
    in_a_row = 0

    def record(item: dict[str, Any], outcome: Outcome) -> None:
        nonlocal in_a_row
        if record_key(outcome.record, key) != record_key(item, key):
            raise ValueError(f"Outcome.record must carry the item's {key!r}")
        if outcome.status == OK:
            output.append(outcome.record)
            stats.ok += 1
            in_a_row = 0
        elif outcome.status in (REJECTED, FAILED):
            rec = dict(outcome.record)
            rec.setdefault("status", outcome.status)
            rec.setdefault("reason", outcome.kind or "unknown")
            failures.append(rec)
            (stats.rejected if outcome.status == REJECTED else stats.failed)[outcome.kind or "unknown"] += 1
            in_a_row = in_a_row + 1 if outcome.status == FAILED else 0
        else:
            raise ValueError(f"unknown Outcome.status {outcome.status!r}")
        stats.tokens_in += outcome.tokens_in
        stats.tokens_out += outcome.tokens_out
        stats.items_retried += outcome.retries > 0
        if retry_counts is not None:
            stats.retried = Counter(retry_counts)
        stats.elapsed_s = time.monotonic() - start
        bar.update(stats)
        if abort_after_failures and in_a_row >= abort_after_failures and not fatal:
            fatal.append(RuntimeError("stopping"))  # other workers take no new item
            last = rec.get("detail") or outcome.kind
            raise FatalRunError(
                f"stopped after {in_a_row} failed requests in a row (last: {last}); "
                "the server looks unreachable or broken, re-run the same command to resume"
            )

    async def worker() -> None:
        for item in iterator:
            if fatal:
                return
            outcome = await work(item)
            record(item, outcome)  # even while stopping: an answer received is an answer paid for

    tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    try:
        pending = set(tasks)
        while pending:
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            errors = [t.exception() for t in finished if not t.cancelled() and t.exception() is not None]
            if errors:
                fatal.extend(errors)
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                stats.stopped = str(errors[0])
                errors[0].run_stats = stats  # type: ignore[attr-defined]  # the caller may still print a summary
                raise errors[0]
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        # Wait for the cancelled workers to unwind their in-flight requests (Ctrl-C, a fatal error) before the
        # caller closes its client: a close that waits on a connection a worker still holds would otherwise wait
        # for the server's reply.
        await asyncio.gather(*tasks, return_exceptions=True)
        stats.elapsed_s = time.monotonic() - start
        if retry_counts is not None:
            stats.retried = Counter(retry_counts)
        bar.update(stats, force=True)
        bar.stop()
        output.sync()
        failures.sync()
    return stats
