"""What the lm-evaluation-harness part of an evaluation leaves in the run folder (gad.evaluation.report calls it):

<out>/harness.csv                   one row per (model, task or subtask, metric, filter): value, stderr, n
<out>/harness/<task>/<model>.jsonl  per document: the document, the prompts, the model's outputs, its scores
summary.json "harness"              the same rows, the failures and what came from the cache

and one table: the requested tasks (not a group's subtasks), model x task x metric, value ± stderr.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

COLUMNS = [
    "model",
    "spec",
    "task",
    "alias",
    "requested",
    "metric",
    "filter",
    "value",
    "stderr",
    "n",
    "higher_is_better",
]


def write_harness(harness, out_dir: Path) -> dict[str, Any]:
    """harness.csv and the per-document files; returns the summary.json entry."""
    with open(out_dir / "harness.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in harness.rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
    if harness.params.log_samples:
        for (model, task), path in harness.samples.items():
            dest = out_dir / "harness" / task / f"{model}.jsonl"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
    return {
        "tasks": harness.tasks,
        "include_path": harness.include_path,
        "limit": harness.limit,
        "lm_eval": harness.version,
        "rows": harness.rows,
        "failures": harness.failures,
    }


def harness_table(rows: list[dict[str, Any]]):
    from rich.table import Table

    tab = Table(title="lm-evaluation-harness", title_justify="left")
    for col, justify in (("model", "left"), ("task", "left"), ("metric", "left"), ("value", "right")):
        tab.add_column(col, justify=justify, style="bold" if col == "model" else None)
    tab.add_column("± stderr", justify="right")
    tab.add_column("n", justify="right")
    for r in rows:
        if not r.get("requested"):
            continue
        metric = r["metric"] if r["filter"] == "none" else f"{r['metric']} ({r['filter']})"
        stderr = "-" if r.get("stderr") is None else f"{r['stderr']:.4f}"
        n = "-" if r.get("n") is None else str(r["n"])
        tab.add_row(str(r["model"]), str(r["task"]), metric, f"{r['value']:.4f}", stderr, n)
    return tab


def print_harness(harness) -> None:
    import sys

    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)
    if any(r.get("requested") for r in harness.rows):
        console.print(harness_table(harness.rows))
    for f in harness.failures:
        console.print(f"harness: {f['model']} / {f['task']} failed: {f['error']}", highlight=False, soft_wrap=True)
    s = harness.stats
    print(f"harness cache: {s.computed} (model, task) pairs new / {s.cached} cached")
