"""The summary of a Hydra sweep: one CSV row per job (its overrides and final metrics) and a plot
of the chosen metric against each swept knob, both refreshed in the sweep folder after every job,
so a sweep stopped early, or with failed jobs, still leaves a complete summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

SUMMARY_METRICS = ["train/d_acc", "train/score_gap", "train/reward_mean", "train/response_len", "train/kl"]


def final_metrics(job_dir: Path) -> dict[str, float]:
    """The last logged value of each metric in a job's metrics.csv, its last phase's means and its results after training."""
    out: dict[str, float] = {}
    metrics = job_dir / "metrics.csv"
    if metrics.is_file():
        for row in csv.DictReader(open(metrics)):
            out.update(
                {k: float(v) for k, v in row.items() if v not in ("", None) and k.startswith(("val/", "train/step"))}
            )
    summary = job_dir / "summary.json"
    if summary.is_file():
        summary = json.loads(summary.read_text())
        phases = summary.get("phases", {})
        last_phase = list(phases.values())[-1] if phases else {}
        out.update({k: v for k, v in last_phase.items() if k in SUMMARY_METRICS})
        # Held-out results after training (e.g. toy accuracy per split), as measured by the callbacks.
        out.update({name: values["after"] for name, values in summary.get("results", {}).items() if "after" in values})
    return out


def job_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for job_dir in sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    ):
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.to_container(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
        knobs = dict(o.split("=", 1) for o in overrides if "=" in o and not o.startswith("hydra"))
        metrics = final_metrics(job_dir)
        status = "done" if (job_dir / "summary.json").is_file() else "failed or running"
        rows.append({"job": int(job_dir.name), "status": status, **knobs, **metrics})
    return rows


def write_summary(sweep_dir: Path, metric: str) -> Path:
    rows = job_rows(sweep_dir)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    path = sweep_dir / "sweep_summary.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    plot_summary(rows, metric, sweep_dir / "sweep_summary.png")
    return path


def plot_summary(rows: list[dict[str, Any]], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = [
        k for k in rows[0] if k not in ("job", "status") and "/" not in k and len({str(r.get(k)) for r in rows}) > 1
    ]
    if not swept:
        return
    fig, axes = plt.subplots(1, len(swept), figsize=(4 * len(swept), 3.2), squeeze=False)
    for ax, knob in zip(axes[0], swept):
        points = [(str(r[knob]), r[metric]) for r in rows if metric in r]
        values = sorted({p[0] for p in points}, key=lambda v: (float(v) if _is_number(v) else float("inf"), v))
        ax.scatter([values.index(p[0]) for p in points], [p[1] for p in points])
        ax.set_xticks(range(len(values)), values)
        ax.set_xlabel(knob)
        ax.set_ylabel(metric)
    fig.suptitle(f"{metric} per job, against each swept knob")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _is_number(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False


class SweepSummary(Callback):
    """Hydra callback: after each multirun job, rewrite `sweep_summary.csv` and `.png`."""

    def __init__(self, metric: str = "val/nll"):
        self.metric = metric

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:
            write_summary(Path(hydra_cfg.sweep.dir), self.metric)
