"""End-of-run report: a rich table of what one run did, plus an optional cost estimate."""

from __future__ import annotations

from collections.abc import Iterable

from gad.api.runner import RunStats


def estimate_cost(
    tokens_in: int, tokens_out: int, price_in_per_mtok: float | None, price_out_per_mtok: float | None
) -> float | None:
    """USD for the tokens at the given prices per million tokens; None when no price is configured."""
    if price_in_per_mtok is None and price_out_per_mtok is None:
        return None
    return tokens_in / 1e6 * float(price_in_per_mtok or 0.0) + tokens_out / 1e6 * float(price_out_per_mtok or 0.0)


def _kinds(counter) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counter.most_common()) if counter else ""


def summary_table(
    stats: RunStats,
    *,
    title: str = "run summary",
    cost: float | None = None,
    extra_rows: Iterable[tuple[str, str]] = (),
):
    """A `rich.table.Table`: done, rejected and failed by kind, retried, tokens, rate, cost, extras."""
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("sent this run", f"{stats.done:,} of {stats.total:,}")
    table.add_row("done", f"{stats.ok:,}")
    table.add_row("refused/rejected", f"{sum(stats.rejected.values()):,}  {_kinds(stats.rejected)}".rstrip())
    table.add_row("failed", f"{sum(stats.failed.values()):,}  {_kinds(stats.failed)}".rstrip())
    table.add_row(
        "retried",
        f"{stats.items_retried:,} requests, {sum(stats.retried.values()):,} retries  {_kinds(stats.retried)}".rstrip(),
    )
    table.add_row("tokens in / out", f"{stats.tokens_in:,} / {stats.tokens_out:,}")
    table.add_row("time", f"{stats.elapsed_s:.1f} s, {stats.rate:.1f} req/s")
    if cost is not None:
        table.add_row("estimated cost", f"${cost:,.4f}")
    for name, value in extra_rows:
        table.add_row(name, value)
    if stats.stopped:
        table.add_row("stopped", stats.stopped)
    return table
