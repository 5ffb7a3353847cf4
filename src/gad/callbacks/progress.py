"""What the terminal shows during training: the networks, the plan, and a progress bar in method steps.

`PlanProgressBar` counts method steps (not Lightning's batches or optimizer steps) against the
method's `total_steps`, names the phase being trained, estimates the time left, and shows the
recent mean of the numbers worth watching. On a terminal it is a live rich bar; anywhere else
(a pipe, a cluster log) the same information is one plain line every `every_n_steps` steps.

`NetworkSummary` replaces Lightning's model summary: one row per network, trained and frozen
parameters apart, without metric objects or a FLOPs column Lightning can only fill from an
example input (it printed 0).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from datetime import timedelta

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text
from torchmetrics import Metric

from gad.console import console
from gad.step_record import TrainingModule

# metric -> label, in display order; each is shown once the phase has logged it (the mean of its recent steps)
WATCHED = {
    "train/d_acc": "D acc",
    "train/score_gap": "D gap",
    "train/sft_loss": "CE",
    "train/reward_mean": "reward",
    "train/kl": "KL",
}


@contextlib.contextmanager
def _at_step(module: L.LightningModule, step: int) -> Iterator[None]:
    """`module` as it stands before method step `step` + 1 (its counter restored afterwards)."""
    saved = module.completed_steps
    module.completed_steps = step
    try:
        yield
    finally:
        module.completed_steps = saved


def phase_label(module: L.LightningModule, step: int | None = None) -> str:
    """The phase that method step `step` + 1 trains (default: the next step to run), as the method names it
    (`DistillModule.phase_name`: "training" for methods without phases, SeqKD and KD)."""
    with _at_step(module, module.completed_steps if step is None else step):
        return module.phase_name()


def plan(module: L.LightningModule) -> list[tuple[str, int]]:
    """The method's whole schedule as (phase label, number of steps) runs, in order."""
    labels = (phase_label(module, step) for step in range(module.total_steps))
    return [(label, sum(1 for _ in steps)) for label, steps in itertools.groupby(labels)]


def plan_line(module: L.LightningModule) -> str:
    """`plan: 160 steps = warm-up, D only 5 -> warm-up 115 -> adversarial 40`."""
    return f"plan: {module.total_steps} steps = " + " -> ".join(f"{label} {n}" for label, n in plan(module))


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class _TwoLineProgress(Progress):
    """A rich Progress with a line of numbers under the bar (they would squeeze the bar off an 80-column line)."""

    numbers = ""

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        if self.numbers:
            yield Text("  " + self.numbers, no_wrap=True, overflow="ellipsis")


class PlanProgressBar(ProgressBar):
    """Method steps done of `total_steps`, the phase, elapsed time and ETA, and the mean of the watched
    numbers over the phase's last `window` steps; plain lines every `every_n_steps` steps off a terminal."""

    def __init__(self, every_n_steps: int = 20, window: int = 10):
        super().__init__()
        self.every_n_steps, self.window = every_n_steps, window
        self._enabled = True
        self._progress: _TwoLineProgress | None = None
        self._task = None
        self._recent: dict[str, deque] = defaultdict(lambda: deque(maxlen=window))
        self._phase: str | None = None
        self._start: tuple[float, int] | None = None  # (time, completed steps) when this process started training

    # ------------------------------------------------------------ Lightning's progress-bar interface

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.trainer.is_global_zero

    @property
    def is_disabled(self) -> bool:
        return not self.is_enabled

    def print(self, *args, **kwargs) -> None:
        console().print(*args, **kwargs)

    # ------------------------------------------------------------ hooks

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.is_enabled:
            return
        out = console()
        out.print(plan_line(pl_module), highlight=False, soft_wrap=True)
        self._start = (time.monotonic(), pl_module.completed_steps)
        self._phase = phase_label(pl_module)
        if out.is_terminal or out.is_jupyter:
            self._progress = _TwoLineProgress(
                TextColumn("[bold]{task.description:<15}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("steps"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=out,
            )
            self._task = self._progress.add_task(
                self._phase, total=pl_module.total_steps, completed=pl_module.completed_steps
            )
            self._progress.start()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: TrainingModule, outputs, batch, batch_idx: int) -> None:
        record = pl_module.last_step
        if not self.is_enabled or record is None:
            return
        step, total = record.step, pl_module.total_steps
        ran = self._phase  # the phase this step trained
        for key in (*WATCHED, "train/response_len", "train/teacher_len"):
            if key in record.metrics:
                self._recent[key].append(record.metrics[key])
        numbers = self.numbers(trainer, ran)
        self._phase = phase_label(pl_module)
        if self._progress is not None:
            self._progress.numbers = numbers
            self._progress.update(self._task, completed=step, description=self._phase)
        elif step == 1 or step % self.every_n_steps == 0 or step == total or self._phase != ran:
            console().print(self.log_line(step, total, ran, numbers), highlight=False, soft_wrap=True)
        if self._phase != ran:
            self._recent.clear()  # means never mix two phases

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._stop()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stop()

    # ------------------------------------------------------------ text

    def numbers(self, trainer: L.Trainer, phase: str) -> str:
        """`D acc 0.56 · D gap 0.31 · CE 1.26 · len 4.4 vs teacher 4.4 · val/nll 1.293`: recent means.

        D's mean score of the student's samples is called a reward only where a policy step uses it."""
        mean = {k: sum(v) / len(v) for k, v in self._recent.items() if v}
        if phase != "adversarial":
            mean.pop("train/reward_mean", None)
        parts = [f"{label} {mean[key]:.3f}" for key, label in WATCHED.items() if key in mean]
        if "train/response_len" in mean:
            teacher = f" vs teacher {mean['train/teacher_len']:.1f}" if "train/teacher_len" in mean else ""
            parts.append(f"len {mean['train/response_len']:.1f}{teacher}")
        if "val/nll" in trainer.callback_metrics:
            parts.append(f"val/nll {float(trainer.callback_metrics['val/nll']):.3f}")
        return " · ".join(parts)

    def log_line(self, step: int, total: int, phase: str, numbers: str) -> str:
        """`step 40/160 (25%) · warm-up · 0:00:15 elapsed · ETA 0:00:45 · <numbers>`; the ETA extrapolates
        this process's mean time per step."""
        parts = [f"step {step}/{total} ({100 * step / max(total, 1):.0f}%)", phase]
        if self._start is not None:
            elapsed, done = time.monotonic() - self._start[0], step - self._start[1]
            parts.append(f"{_clock(elapsed)} elapsed")
            if done > 0:
                parts.append(f"ETA {_clock(elapsed / done * (total - step))}")
        return " · ".join(parts + ([numbers] if numbers else []))

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class NetworkSummary(ModelSummary):
    """One row per network of the module: its class, parameters, and how many of them train."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        table = Table(title="networks")
        table.add_column("network")
        table.add_column("class")
        table.add_column("params", justify="right")
        table.add_column("trained", justify="right")
        for name, module in pl_module.named_children():
            if isinstance(module, Metric):  # val_nll: a metric object, not a network
                continue
            params = list(module.parameters())
            trained = sum(p.numel() for p in params if p.requires_grad)
            table.add_row(
                name,
                type(module).__name__,
                get_human_readable_count(sum(p.numel() for p in params)),
                get_human_readable_count(trained) if trained else "frozen",
            )
        console().print(table)
