"""What an evaluation leaves behind: per (set, model) JSONL, summary.csv/json, a table, a plot.

<out>/<set>/<model>.jsonl   one line per prompt: prompt, teacher, generation, every score
<out>/summary.csv           one row per (model, set), every summary number
<out>/summary.json          the same rows, plus cache hits / new work and judge request counts
<out>/score_vs_length.png   score against length ratio, one colour per model, one point per set
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gad.data.records import write_jsonl

# (summary key, column title, format) of the printed table; a column that is empty everywhere is left out
TABLE = [
    ("judge_score", "judge", "{:.1f}"),
    ("judge_lc_subset", "judge LC\n(len 0.8-1.25)", "{:.1f}"),
    ("judge_lc_regression", "judge LC\n(regr. @1)", "{:.1f}"),
    ("judge_length_ratio", "len / judge\nref", "{:.2f}"),
    ("judge_unparseable", "unparsed\nverdicts", "{:d}"),
    ("toy_accuracy", "toy acc", "{:.3f}"),
    ("length_ratio", "len /\nteacher", "{:.2f}"),
    ("tokens_mean", "len\n(tokens)", "{:.1f}"),
    ("rougeL", "ROUGE-L", "{:.3f}"),
    ("f1_mean", "F1 n=1-6", "{:.3f}"),
    ("perplexity", "ppl\n(teacher)", "{:.2f}"),
]


def _defined(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def summary_columns(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    return cols


def cache_report(evaluation) -> dict[str, Any]:
    gen = {"new": 0, "cached": 0}
    nll = {"new": 0, "cached": 0}
    loaded = []
    for name, stats in evaluation.cache.items():
        gen["new"] += stats.generated
        gen["cached"] += stats.generation_hits
        nll["new"] += stats.nll_computed
        nll["cached"] += stats.nll_hits
        if stats.model_loaded:
            loaded.append(name)
    out: dict[str, Any] = {"generation": gen, "perplexity": nll, "models_loaded": loaded}
    if evaluation.judge is not None:
        out["judge"] = {
            "model": evaluation.judge_model,
            **evaluation.judge.as_dict(),
            "cost_usd": evaluation.judge_cost,
        }
    return out


def write_outputs(
    evaluation, out_dir: Path, cfg: DictConfig, *, title: str = "evaluation", extra: dict | None = None
) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    for (model, set_name), rows in evaluation.prompts.items():
        write_jsonl(rows, out_dir / set_name / f"{model}.jsonl")
    rows = [_json_safe(r) for r in evaluation.rows]
    cols = summary_columns(rows)
    with open(out_dir / "summary.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in cols})
    summary = {
        "rows": rows,
        "cache": cache_report(evaluation),
        "sets": {s.name: {"source": s.source, "prompts": len(s.records)} for s in evaluation.sets},
        "models": {
            n: {"spec": m.spec, "kind": m.kind, "path": m.path, "fingerprint": m.fingerprint}
            for n, m in evaluation.models.items()
        },
        "generation": OmegaConf.to_container(cfg.generation, resolve=True),
        "length_control": OmegaConf.to_container(cfg.length_control, resolve=True),
        **(extra or {}),
    }
    harness = getattr(evaluation, "harness", None)
    if harness is not None:  # lm-evaluation-harness: harness.csv, harness/<task>/<model>.jsonl (harness_report)
        from gad.evaluation.harness_report import write_harness

        summary["harness"] = write_harness(harness, out_dir)
        summary["cache"]["harness"] = harness.stats.as_dict()
    (out_dir / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2, ensure_ascii=False) + "\n")
    if cfg.get("plot", True) and evaluation.rows:
        plot(evaluation.rows, out_dir / "score_vs_length.png")
    if evaluation.rows:  # none with harness tasks only (benchmark=harness)
        print_table(evaluation.rows, title=title)
        print_cache_line(summary["cache"])
    if harness is not None:
        from gad.evaluation.harness_report import print_harness

        print_harness(harness)
    print(f"outputs: {out_dir}")
    return summary


def table(rows: list[dict[str, Any]], title: str = "evaluation"):
    from rich.table import Table

    cols = [(k, t, f) for k, t, f in TABLE if any(_defined(r.get(k)) for r in rows)]
    tab = Table(title=title, title_justify="left")
    tab.add_column("model", style="bold")
    tab.add_column("set")
    tab.add_column("n", justify="right")
    for _, header, _ in cols:
        tab.add_column(header, justify="right")
    for row in rows:
        cells = []
        for key, _, fmt in cols:
            value = row.get(key)
            cells.append(fmt.format(value) if _defined(value) else "-")
        tab.add_row(str(row["model"]), str(row["set"]), str(row["n"]), *cells)
    return tab


def print_table(rows: list[dict[str, Any]], title: str = "evaluation") -> None:
    import sys

    from rich.console import Console

    Console(width=None if sys.stdout.isatty() else 160).print(table(rows, title))


def print_cache_line(cache: dict[str, Any]) -> None:
    gen, nll = cache["generation"], cache["perplexity"]
    line = (
        f"cache: generations {gen['new']} new / {gen['cached']} cached; "
        f"teacher NLL {nll['new']} new / {nll['cached']} cached"
    )
    judge = cache.get("judge")
    if judge:
        line += (
            f"; judge {judge['requests']} requests (references {judge['references_sent']} sent / "
            f"{judge['references_cached']} cached, verdicts {judge['verdicts_sent']} sent / {judge['verdicts_cached']} cached)"
        )
        if judge.get("cost_usd") is not None:
            line += f", about ${judge['cost_usd']:.4f} this run"
    print(line)


def plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Score vs length ratio: judge score when there is one, else toy accuracy, else ROUGE-L."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key, label, scale in (  # noqa: B007  (the first metric present: read after the loop)
        ("judge_score", "judge score (50 = parity with the judge)", 1.0),
        ("toy_accuracy", "toy accuracy (%)", 100.0),
        ("rougeL", "ROUGE-L x 100", 100.0),
    ):
        if any(_defined(r.get(key)) for r in rows):
            break
    else:
        return None
    x_key, x_label = (
        ("judge_length_ratio", "length / judge reference (tokens)")
        if key == "judge_score"
        else ("length_ratio", "length / teacher (tokens)")
    )
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    models = list(dict.fromkeys(r["model"] for r in rows))
    for i, model in enumerate(models):
        pts = [
            (r[x_key], r[key] * scale, r["set"])
            for r in rows
            if r["model"] == model and _defined(r.get(x_key)) and _defined(r.get(key))
        ]
        if not pts:
            continue
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=model, color=f"C{i}", s=40)
        for x, y, name in pts:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8, color=f"C{i}")
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    if key == "judge_score":
        ax.axhline(50.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel(x_label)
    ax.set_ylabel(label)
    ax.set_title("score vs length")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
