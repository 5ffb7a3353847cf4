"""Checkpoint selection on a validation split, never on the test set (the paper picked on test).

`select.run=<run>` scores every periodic checkpoint (`checkpoints/step_*.ckpt`) of a training run
on validation prompts and reports the best one whose length ratio stays within
`select.max_length_ratio` (a longer-than-teacher student can buy judge points with length).

Validation prompts: `select.prompts` (any prompt file) or, by default, the run's own held-out
validation split: the `data.val_size` teacher pairs its training held out (same dump, same seeded
hash of the ids as `DistillDataModule`), which the student never trained on.

Metric (`select.metric`): judge_score | judge_lc_regression | judge_lc_subset | toy_accuracy |
rougeL | f1_mean | perplexity (lower is better); `auto` = judge_score with a judge, else
toy_accuracy on toy-world prompts, else rougeL. The length ratio bounded is the student's length
over the teacher's, or over the judge's reference when the prompts have no teacher response.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gad.config.typed import typed
from gad.errors import GADError
from gad.evaluation.config import METRICS, SelectConfig, harness_metric
from gad.evaluation.evaluate import EXIT_INCOMPLETE, score
from gad.evaluation.harness import harness_for
from gad.evaluation.model_specs import CKPT, ModelSpec, fingerprint
from gad.evaluation.sets import PromptSet, load_set, one_per_prompt


def validation_set(cfg: DictConfig, run_dir: Path) -> PromptSet:
    from gad.data.datamodule import validation_split
    from gad.data.records import Columns, read_records
    from gad.runs import run_config

    if cfg.select.get("prompts"):
        return load_set("validation", cfg.select.prompts, cfg.get("limit"))
    data = run_config(run_dir).data
    if int(data.get("val_size") or 0) <= 0:
        raise GADError(
            f"{run_dir}: the run held out no validation split (data.val_size=0); name one with select.prompts=<file>"
        )
    columns = Columns(**dict(data.get("columns") or {}))
    records, _ = read_records(
        str(data.path),
        columns,
        split=str(data.get("split", "train")),
        skip_invalid=bool(data.get("skip_invalid", False)),
    )
    _, held = validation_split(records, int(data.val_size), int(data.seed))
    held = one_per_prompt(held)  # as any prompt set: once per prompt, its first teacher's response
    if cfg.get("limit"):
        held = held[: int(cfg.limit)]
    return PromptSet("validation", f"{data.path} (held-out validation split of {run_dir.name})", held)


def _step(path: Path) -> int | None:
    try:
        return int(path.stem.split("_")[-1])
    except ValueError:
        return None


def pick_best(
    rows: list[dict[str, Any]], metric: str, length_key: str, bound: float | None, sign: int | None = None
) -> dict[str, Any] | None:
    """Mark each row `eligible` (metric defined, length ratio <= bound) and `best`; return the best row.

    Best = the highest metric (lowest for perplexity; `sign` -1: lowest) among eligible rows; ties go to the
    earlier step.
    """
    sign = METRICS[metric] if sign is None else sign
    for r in rows:
        value, ratio = r.get(metric, math.nan), r.get(length_key, math.nan)
        r["eligible"] = not _nan(value) and (bound is None or (not _nan(ratio) and ratio <= bound))
    eligible = [r for r in rows if r["eligible"]]
    best = max(eligible, key=lambda r: (sign * r[metric], -(r.get("step") or 0))) if eligible else None
    for r in rows:
        r["best"] = r is best
    return best


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def select_checkpoint(cfg: DictConfig, out_dir: Path, console) -> int:
    from gad.evaluation.report import write_outputs
    from gad.runs import checkpoints, latest_run

    sel = typed(SelectConfig, cfg.select, "select")
    run_text = str(sel.run)
    run_dir = latest_run(Path(cfg.paths.log_dir) / "train") if run_text == "latest" else Path(run_text).expanduser()
    if not (run_dir / "config.yaml").is_file():
        raise GADError(f"select.run: '{run_text}' is not a training run folder (no config.yaml)")
    ckpts = checkpoints(run_dir)
    if sel.include_last and (run_dir / "checkpoints" / "last.ckpt").exists():
        ckpts.append(run_dir / "checkpoints" / "last.ckpt")
    if not ckpts:
        raise GADError(
            f"select.run: {run_dir} has no checkpoints/step_*.ckpt (set callbacks.step_checkpoint.every_n_steps)"
        )
    metric, bound = sel.metric, sel.max_length_ratio
    valset = validation_set(cfg, run_dir.resolve())
    models: dict[str, ModelSpec] = {}
    for path in ckpts:
        name = path.stem
        spec = ModelSpec(name, str(path), CKPT, str(path.resolve()), run_dir=str(run_dir.resolve()))
        spec.fingerprint = fingerprint(spec)
        models[name] = spec
    harness = harness_for(cfg, models)  # harness.tasks, and the task of a harness:<task>:<metric> to select by
    evaluation = score(models, [valset], cfg, console, harness=harness)
    rows = evaluation.rows
    picked = harness_metric(metric)
    if picked:  # a harness metric: each checkpoint's value from its harness rows
        for name, row in zip(models, rows):
            row[metric] = harness.value(name, *picked)
        if all(row[metric] is None for row in rows) and not harness.failures:
            raise GADError(f"select.metric: {picked[0]} reported no metric '{picked[1]}' (see harness.csv)")
    if metric == "auto":
        if cfg.get("judge"):
            metric = "judge_score"
        elif any(not math.isnan(r["toy_accuracy"]) for r in rows):
            metric = "toy_accuracy"
        else:
            metric = "rougeL"
    sign = (1 if harness.higher_is_better(*picked) else -1) if picked else METRICS[metric]
    length_key = "length_ratio" if valset.has_teacher else "judge_length_ratio"
    table_rows = [
        {
            "checkpoint": path.name,
            "step": _step(path),
            "path": str(path.resolve()),
            metric: row.get(metric, math.nan),
            length_key: row.get(length_key, math.nan),
        }
        for path, row in zip(ckpts, rows)
    ]
    best = pick_best(table_rows, metric, length_key, bound, sign)
    selection = {
        "run": str(run_dir.resolve()),
        "validation": valset.source,
        "prompts": len(valset.records),
        "metric": metric,
        "higher_is_better": sign > 0,
        "max_length_ratio": bound,
        "length_key": length_key,
        "checkpoints": table_rows,
        "best": best["path"] if best else None,
    }
    write_outputs(
        evaluation,
        out_dir,
        cfg,
        title=f"checkpoints of {run_dir.name} on {valset.name}",
        extra={"selection": selection},
    )
    with open(out_dir / "selection.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table_rows[0]))
        writer.writeheader()
        writer.writerows(table_rows)
    (out_dir / "selection.json").write_text(json.dumps(selection, indent=2, default=lambda v: None) + "\n")
    _print_selection(selection)
    if evaluation.incomplete or (harness is not None and harness.failures):
        return EXIT_INCOMPLETE
    return 0


def _print_selection(selection: dict[str, Any]) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    metric, key = selection["metric"], selection["length_key"]
    tab = Table(
        title=f"checkpoint selection: {metric} ({'higher' if selection['higher_is_better'] else 'lower'} is better), "
        f"{key} <= {selection['max_length_ratio']}",
        title_justify="left",
    )
    for col in ("checkpoint", metric, key, "eligible", "best"):
        tab.add_column(col, justify="right" if col not in ("checkpoint",) else "left")
    for r in selection["checkpoints"]:
        fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"  # noqa: E731
        tab.add_row(
            r["checkpoint"],
            fmt(r[metric]),
            fmt(r[key]),
            "yes" if r["eligible"] else "no",
            "<- best" if r["best"] else "",
        )
    Console(width=None if sys.stdout.isatty() else 160).print(tab)
    if selection["best"]:
        print(f"best checkpoint: {selection['best']}")
    else:
        print("best checkpoint: none within the length bound")
