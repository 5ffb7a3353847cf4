"""The tables printed at the end of a run (also written to `<run>/summary.json`), and the run's
figures written to `<run>/figures/`."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import lightning as L
from rich.table import Table

from gad.console import console
from gad.step_record import Phase, TrainingModule

COLUMNS = {  # metric -> column title (short: the table must fit an 80-column terminal)
    "train/d_acc": "D acc",
    "train/score_gap": "D gap",
    "train/reward_mean": "reward",  # shown for the adversarial phase only: no other phase has a policy step
    "train/response_len": "len",
    "train/teacher_len": "t len",
    "train/sft_loss": "CE",
    "train/kl": "KL",
}


REWARDED_PHASES = {Phase.ADVERSARIAL}  # phases whose policy step takes D's scores of the samples as rewards
UNPHASED = "training"  # the row of methods without phases (SeqKD, KD)


class RunSummary(L.Callback):
    """Per phase, the mean of each watched metric over the phase's last `window` steps.

    Other callbacks add before/after results with `add_result` (e.g. `ToyAccuracy`: held-out toy accuracy).
    With `figures`, the run's figures (`gad.analysis.plots.save_run_figures`) go to
    `<dirpath>/figures/`, drawn from the steps seen here and `<dirpath>/rollouts.jsonl`.
    """

    def __init__(self, dirpath: str, window: int = 10, figures: bool = True):
        self.dirpath = Path(dirpath)
        self.path = self.dirpath / "summary.json"
        self.window, self.figures = window, figures
        self.history: dict[Phase | None, list[dict[str, float]]] = defaultdict(list)  # None: methods without phases
        self.steps: list[dict[str, float]] = []  # every step's logged metrics, for the figures
        self.results: dict[str, dict[str, float]] = {}
        # Wall time of the training steps in this process (each step's batch start to its end: no validation, no
        # evaluation, nothing before step 1), the cost the methods' comparison puts beside their results.
        self.step_seconds, self._step_start = 0.0, 0.0

    def add_result(self, name: str, **values: float) -> None:
        self.results.setdefault(name, {}).update(values)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module: TrainingModule, outputs, batch, batch_idx: int) -> None:
        self.step_seconds += time.perf_counter() - self._step_start
        record = pl_module.last_step
        if record is not None:
            self.history[record.phase].append({k: v for k, v in record.metrics.items() if k in COLUMNS})
            self.steps.append(dict(record.metrics))

    def phase_means(self) -> dict[Phase | None, dict[str, float]]:
        table = {}
        for phase, rows in self.history.items():
            recent = rows[-self.window :]
            keys = {k for row in recent for k in row}
            table[phase] = {
                "steps": len(rows),
                **{k: sum(r[k] for r in recent if k in r) / sum(k in r for r in recent) for k in keys},
            }
        return table

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on_fit_end follows every callback's on_train_end, so their results are in by now.
        if not trainer.is_global_zero:
            return
        phases = self.phase_means()
        labels = {phase: phase.label if phase is not None else UNPHASED for phase in phases}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "phases": {labels[phase]: means for phase, means in phases.items()},
            "results": self.results,
            "step_seconds": self.step_seconds,
        }
        self.path.write_text(json.dumps(summary, indent=2))
        out = console()
        table = Table(
            title=f"run summary: mean of each phase's last {self.window} steps",
            caption="D gap: mean D score, teacher minus student; reward: D score of the student's samples, "
            "where a policy step uses it; len / t len: student / teacher tokens",
        )
        table.add_column("phase", no_wrap=True, min_width=11)
        table.add_column("steps", justify="right")
        for title in COLUMNS.values():
            table.add_column(title, justify="right")
        for phase, means in phases.items():
            shown = {k: v for k, v in means.items() if k != "train/reward_mean" or phase in REWARDED_PHASES}
            cells = [f"{shown[k]:.3f}" if k in shown else "-" for k in COLUMNS]
            table.add_row(labels[phase], str(means["steps"]), *cells)
        out.print(table)
        if self.results:
            results = Table(title="held-out results")
            names = sorted({k for v in self.results.values() for k in v}, key=lambda n: (n != "before", n))
            results.add_column("metric")
            for n in names:
                results.add_column(n, justify="right")
            for metric, values in self.results.items():
                results.add_row(metric, *(f"{values[n]:.3f}" if n in values else "-" for n in names))
            out.print(results)
        if self.figures and self.steps:
            paths = self.write_figures()
            out.print(
                f"figures: {paths[0].parent}/ ({', '.join(p.name for p in paths)})", highlight=False, soft_wrap=True
            )

    def write_figures(self) -> list[Path]:
        """Draw the run's figures from the steps seen and the logged rollout samples (if any)."""
        import pandas as pd  # plotting imports only where figures are drawn

        from gad.analysis.plots import save_run_figures
        from gad.analysis.runs_data import load_rollouts, metrics_frame

        metrics = metrics_frame(pd.DataFrame(self.steps))
        rollouts = load_rollouts(self.dirpath) if (self.dirpath / "rollouts.jsonl").is_file() else None
        return save_run_figures(self.dirpath / "figures", metrics, rollouts)
