"""Matplotlib figures of a run, each a labelled `Figure` readable without the code.

Inputs are the tables of `gad.analysis.runs_data` (`load_metrics`, `load_rollouts`). No
figure is shown or saved here: notebooks display them, `save_figure` writes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gad.analysis.runs_data import ADVERSARIAL, WARMUP, correlation, early_late_steps, warmup_end

TEACHER_COLOR, STUDENT_COLOR, GAP_COLOR = "tab:orange", "tab:blue", "tab:green"
PHASE_COLORS = {WARMUP: "tab:gray", ADVERSARIAL: "tab:blue"}
BOUNDARY_LABEL = "adversarial phase starts"


def mark_boundary(ax: Axes, boundary: int | None, label: bool = True) -> None:
    """A dashed vertical line between the last warm-up step and the first adversarial one."""
    if boundary is not None:
        ax.axvline(boundary + 0.5, color="black", linestyle="--", linewidth=1, label=BOUNDARY_LABEL if label else None)


def _series(ax: Axes, metrics: pd.DataFrame, column: str, **kwargs) -> bool:
    if column not in metrics.columns or metrics[column].isna().all():
        return False
    s = metrics[column].dropna()
    ax.plot(s.index, s.values, **kwargs)
    return True


def _not_logged(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}\nnot logged in this run", ha="center", va="center", transform=ax.transAxes, color="gray")


def plot_training_curves(metrics: pd.DataFrame, boundary: int | None = None, title: str | None = None) -> Figure:
    """Six panels over training steps: D loss, D accuracy, mean D scores and their gap, reward
    mean +- std, response length (student vs teacher), KL to the reference; the warm-up /
    adversarial boundary (default: detected from the `phase` column) is a dashed line."""
    boundary = warmup_end(metrics) if boundary is None else boundary
    fig = Figure(figsize=(15, 8.5), layout="constrained")
    axes = fig.subplots(2, 3, sharex=True).ravel()

    ax = axes[0]
    if not _series(ax, metrics, "d_loss", color="tab:red", label="D loss"):
        _not_logged(ax, "D loss")
    ax.set(title="Discriminator loss", ylabel="loss (Bradley-Terry)")

    ax = axes[1]
    if _series(ax, metrics, "d_acc", color="tab:purple", label="D accuracy"):
        ax.axhline(0.5, color="gray", linestyle=":", linewidth=1, label="chance")
    else:
        _not_logged(ax, "D accuracy")
    ax.set(
        title="Discriminator accuracy\n(teacher scored above a student sample)", ylabel="accuracy", ylim=(-0.02, 1.02)
    )

    ax = axes[2]
    found = _series(ax, metrics, "teacher_score", color=TEACHER_COLOR, label="teacher (mean)")
    found |= _series(ax, metrics, "student_score", color=STUDENT_COLOR, label="student (mean)")
    found |= _series(ax, metrics, "score_gap", color=GAP_COLOR, linestyle="-.", label="gap (teacher - student)")
    if not found:
        _not_logged(ax, "D scores")
    ax.set(title="Mean D score: teacher vs student", ylabel="D score")

    ax = axes[3]
    if _series(ax, metrics, "reward_mean", color=STUDENT_COLOR, label="reward mean"):
        if "reward_std" in metrics.columns:
            m = metrics[["reward_mean", "reward_std"]].dropna()
            ax.fill_between(
                m.index,
                m.reward_mean - m.reward_std,
                m.reward_mean + m.reward_std,
                color=STUDENT_COLOR,
                alpha=0.2,
                label="+- 1 std (over samples)",
            )
    else:
        _not_logged(ax, "reward")
    # The same D scores are the policy's reward only after the boundary; warm-up has no policy step.
    ax.set(
        title="D score of student samples\n(the reward, once adversarial)",
        ylabel="D score (reward)",
        xlabel="training step",
    )

    ax = axes[4]
    found = _series(ax, metrics, "response_len", color=STUDENT_COLOR, label="student samples (mean)")
    found |= _series(ax, metrics, "teacher_len", color=TEACHER_COLOR, label="teacher responses (mean)")
    if not found:
        _not_logged(ax, "response length")
    ax.set(title="Response length", ylabel="tokens", xlabel="training step")

    ax = axes[5]
    if not _series(ax, metrics, "kl", color="tab:brown", marker=".", label="KL (k3) to reference"):
        _not_logged(ax, "KL")
    ax.set(title="KL to the reference policy\n(adversarial phase only)", ylabel="KL per token", xlabel="training step")

    for _i, ax in enumerate(axes):
        mark_boundary(ax, boundary)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    fig.suptitle(title or "GAD training curves", fontsize=14)
    return fig


def plot_score_histograms(
    rollouts: pd.DataFrame, fraction: float = 1 / 3, bins: int = 30, title: str | None = None
) -> Figure:
    """D scores of teacher responses vs student samples, in the first and the last `fraction` of
    the logged steps (two panels, shared bins, densities so the N:1 sample count does not matter)."""
    early, late = early_late_steps(rollouts["step"], fraction)
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    scores = rollouts["score"].dropna()
    edges = np.linspace(scores.min(), scores.max(), bins + 1) if len(scores) and scores.min() < scores.max() else bins
    for ax, name, steps in ((axes[0], "Early", early), (axes[1], "Late", late)):
        part = rollouts[rollouts["step"].isin(steps)]
        for role, color in (("teacher", TEACHER_COLOR), ("student", STUDENT_COLOR)):
            s = part.loc[part["role"] == role, "score"]
            if len(s):
                ax.hist(
                    s,
                    bins=edges,
                    density=True,
                    alpha=0.55,
                    color=color,
                    label=f"{role} (n={len(s)}, mean {s.mean():.2f})",
                )
                ax.axvline(s.mean(), color=color, linewidth=1.5)
        phases = sorted(set(part["phase"]))
        span = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}"
        ax.set(
            title=f"{name} in training: {span} ({', '.join(phases)})",
            xlabel="D score (solid vertical lines: means)",
            ylabel="density",
        )
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9)
    fig.suptitle(title or "Discriminator scores: teacher responses vs student samples", fontsize=13)
    return fig


def plot_score_vs_length(rollouts: pd.DataFrame, title: str | None = None) -> Figure:
    """Reward hacking check: D score against response length, student samples coloured by phase
    (Pearson r per phase in the legend), teacher responses as crosses."""
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    students = rollouts[rollouts["role"] == "student"]
    for phase in (WARMUP, ADVERSARIAL):
        part = students[students["phase"] == phase]
        if len(part):
            r = correlation(part["length"], part["score"])
            ax.scatter(
                part["length"],
                part["score"],
                s=14,
                alpha=0.5,
                color=PHASE_COLORS[phase],
                label=f"student, {phase} (n={len(part)}, r={r:.2f})",
            )
    teachers = rollouts[rollouts["role"] == "teacher"]
    if len(teachers):
        ax.scatter(
            teachers["length"],
            teachers["score"],
            marker="x",
            s=30,
            color=TEACHER_COLOR,
            label=f"teacher (n={len(teachers)})",
        )
    r_all = correlation(students["length"], students["score"])
    ax.set(
        xlabel="response length (tokens, end-of-turn included)",
        ylabel="D score",
        title=(title or "D score vs response length") + f"\nstudent samples, all steps: Pearson r = {r_all:.2f}",
    )
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9)
    return fig


def plot_length_over_training(
    metrics: pd.DataFrame, rollouts: pd.DataFrame | None = None, boundary: int | None = None, title: str | None = None
) -> Figure:
    """Mean student vs teacher response length per step, with the individual logged samples as
    dots: a student drifting away from the teacher's length once rewarded by D is a warning sign."""
    boundary = warmup_end(metrics) if boundary is None else boundary
    fig = Figure(figsize=(9, 4.8), layout="constrained")
    ax = fig.subplots()
    if rollouts is not None and len(rollouts):
        s = rollouts[rollouts["role"] == "student"]
        jitter = np.random.default_rng(0).uniform(-0.3, 0.3, len(s))
        ax.scatter(s["step"] + jitter, s["length"], s=8, alpha=0.3, color=STUDENT_COLOR, label="logged student samples")
    found = _series(ax, metrics, "response_len", color=STUDENT_COLOR, linewidth=2, label="student samples (mean)")
    found |= _series(ax, metrics, "teacher_len", color=TEACHER_COLOR, linewidth=2, label="teacher responses (mean)")
    if not found:
        _not_logged(ax, "response length")
    mark_boundary(ax, boundary)
    ax.set(xlabel="training step", ylabel="response length (tokens)", title=title or "Response length over training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write a figure as PNG (folders made as needed); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


# The curves of a method that trains no discriminator (SeqKD, KD, SODA, ROPD): metric -> panel title. Each panel
# is drawn when the run logged its metric, in this order, at most six.
METHOD_CURVES = {
    "sft_loss": "CE of the teacher responses",
    "loss": "KD loss",
    "soda_loss": "SODA loss (DPO)",
    "margin": "DPO margin: chosen - rejected reward",
    "pref_acc": "preference accuracy (margin > 0)",
    "reward_mean": "reward of the student's samples (mean)",
    "teacher_reward": "reward of the teacher responses (mean)",
    "kl": "KL to the reference",
    "response_len": "student sample length (tokens)",
}


def plot_method_curves(metrics: pd.DataFrame, title: str | None = None) -> Figure:
    """The run's own training curves when it has no discriminator (`METHOD_CURVES`, those it logged); the
    warm-up / policy boundary as `plot_training_curves` draws it, when the run has phases."""
    shown = [c for c in METHOD_CURVES if c in metrics.columns and not metrics[c].isna().all()][:6]
    fig = Figure(figsize=(5 * max(1, min(3, len(shown))), 4 * (1 + (len(shown) > 3))), layout="constrained")
    if not shown:
        _not_logged(fig.subplots(), "no known training curve")
        return fig
    axes = np.atleast_1d(fig.subplots(1 + (len(shown) > 3), min(3, len(shown)), sharex=True)).ravel()
    boundary = warmup_end(metrics)
    for ax, column in zip(axes, shown):
        _series(ax, metrics, column, color=STUDENT_COLOR)
        mark_boundary(ax, boundary, label=False)
        ax.set(title=METHOD_CURVES[column], xlabel="training step")
        ax.grid(alpha=0.3)
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    fig.suptitle(title or "training curves", fontsize=14)
    return fig


RUN_FIGURES = ("training_curves.png", "d_score_histograms.png", "response_length.png")


def save_run_figures(directory: str | Path, metrics: pd.DataFrame, rollouts: pd.DataFrame | None = None) -> list[Path]:
    """The run's figures as PNGs in `directory`: training curves with the phase boundary, D-score
    histograms early vs late (only with `rollouts`), response length vs the teacher's over steps.
    Returns the paths written, in `RUN_FIGURES` order."""
    directory = Path(directory)
    written = [save_figure(plot_training_curves(metrics), directory / RUN_FIGURES[0])]
    if rollouts is not None and len(rollouts):
        written.append(save_figure(plot_score_histograms(rollouts), directory / RUN_FIGURES[1]))
    written.append(save_figure(plot_length_over_training(metrics, rollouts), directory / RUN_FIGURES[2]))
    return written
