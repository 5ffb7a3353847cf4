"""The printed table: rows read, dropped by every filter, kept, sampled, per split."""

from __future__ import annotations

from gad.teacher_data.prepare.config import PrepareConfig
from gad.teacher_data.prepare.filters import STEPS
from gad.teacher_data.prepare.sample import PrepareResult


def report_table(pc: PrepareConfig, result: PrepareResult):
    """The rich table of every filter count."""
    from rich.table import Table

    table = Table(title=f"prepare: {pc.source.kind} from {pc.source.path}", title_justify="left")
    table.add_column("step")
    for rep in result.reports:
        table.add_column(rep.name, justify="right")
    table.add_row("rows read", *[f"{r.rows:,}" for r in result.reports])
    notes = {
        "language": "off"
        if not pc.filters.language
        else (None if any(r.has_language for r in result.reports) else "n/a (no language column)"),
        "moderation flagged": "off" if not pc.filters.drop_flagged else None,
        "flaw": "off" if pc.filters.keep_flaws is None or pc.source.kind != "lmsys_clean" else None,
        "empty prompt": "off" if not pc.filters.drop_empty else None,
        "redacted only": "off" if not pc.filters.drop_redacted_only else None,
        "duplicate (exact)": "off" if pc.filters.dedup == "none" else None,
        "duplicate (normalised)": "off" if pc.filters.dedup != "normalised" else None,
        "too few tokens": "off" if pc.filters.min_prompt_tokens is None else None,
        "too many tokens": "off" if pc.filters.max_prompt_tokens is None else None,
    }
    for step in STEPS:
        cells = []
        for r in result.reports:
            n = r.dropped.get(step, 0)
            cells.append(f"-{n:,}" if n else (notes.get(step) or "0"))
        table.add_row(f"dropped: {step}", *cells)
    table.add_row("kept after filters", *[f"{r.kept:,}" for r in result.reports])
    table.add_section()
    table.add_row(
        "in both splits (dropped from train)", f"-{result.overlap_dropped:,}", *[""] * (len(result.reports) - 1)
    )
    table.add_row("not sampled (beyond sample.n)", f"{result.not_sampled:,}", *[""] * (len(result.reports) - 1))
    table.add_row("[bold]train.jsonl", f"[bold]{len(result.train):,}", *[""] * (len(result.reports) - 1))
    table.add_row("[bold]test.jsonl", f"[bold]{len(result.test):,}", *[""] * (len(result.reports) - 1))
    return table
