"""The table printed at the end of a run, also written to `<run>/summary.json`."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import lightning as L
from rich.console import Console
from rich.table import Table

from gad.methods.gad import phase_name

COLUMNS = {  # metric -> column title (short: the table must fit an 80-column terminal)
    "train/d_acc": "D acc",
    "train/score_gap": "D gap",
    "train/reward_mean": "reward",
    "train/response_len": "len",
    "train/teacher_len": "t len",
    "train/sft_loss": "CE",
    "train/kl": "KL",
}


class RunSummary(L.Callback):
    """Per phase, the mean of each watched metric over the phase's last `window` steps.

    Other callbacks add before/after results with `add_result` (e.g. held-out toy accuracy).
    """

    def __init__(self, dirpath: str, window: int = 10):
        self.path = Path(dirpath) / "summary.json"
        self.window = window
        self.history: dict[str, list[dict[str, float]]] = defaultdict(list)
        self.results: dict[str, dict[str, float]] = {}

    def add_result(self, name: str, **values: float) -> None:
        self.results.setdefault(name, {}).update(values)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if outputs:
            # Methods without phases (SeqKD, KD) log no train/phase.
            phase = phase_name(outputs["train/phase"]) if "train/phase" in outputs else "training"
            self.history[phase].append({k: v for k, v in outputs.items() if k in COLUMNS})

    def phase_means(self) -> dict[str, dict[str, float]]:
        table = {}
        for phase, rows in self.history.items():
            recent = rows[-self.window :]
            keys = {k for row in recent for k in row}
            table[phase] = {"steps": len(rows), **{k: sum(r[k] for r in recent if k in r) / sum(k in r for r in recent) for k in keys}}
        return table

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on_fit_end follows every callback's on_train_end, so their results are in by now.
        if not trainer.is_global_zero:
            return
        phases = self.phase_means()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"phases": phases, "results": self.results}, indent=2))
        console = Console()
        table = Table(title=f"run summary: mean of each phase's last {self.window} steps",
                      caption="D gap: mean D score, teacher minus student; len / t len: student / teacher tokens")
        table.add_column("phase", no_wrap=True, min_width=11)
        table.add_column("steps", justify="right")
        for title in COLUMNS.values():
            table.add_column(title, justify="right")
        for phase, means in phases.items():
            cells = [f"{means[k]:.3f}" if k in means else "-" for k in COLUMNS]
            table.add_row(phase, str(means["steps"]), *cells)
        console.print(table)
        if self.results:
            results = Table(title="held-out results")
            names = sorted({k for v in self.results.values() for k in v}, key=lambda n: (n != "before", n))
            results.add_column("metric")
            for n in names:
                results.add_column(n, justify="right")
            for metric, values in self.results.items():
                results.add_row(metric, *(f"{values[n]:.3f}" if n in values else "-" for n in names))
            console.print(results)
