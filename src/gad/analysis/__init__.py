"""Exploring a finished run: its logs as pandas tables, matplotlib figures, and its discriminator.

Used by `notebooks/discriminator_scores.ipynb`; `python -m gad.analysis` exports figures.
"""

from gad.analysis.plots import (
    plot_length_over_training,
    plot_method_curves,
    plot_score_histograms,
    plot_score_vs_length,
    plot_training_curves,
    save_figure,
)
from gad.analysis.runs_data import (
    RUN_DIR_ENV,
    correlation,
    early_late_steps,
    extreme_samples,
    length_correlations,
    load_metrics,
    load_rollouts,
    metrics_frame,
    resolve_run_dir,
    rollouts_frame,
    user_turn,
    warmup_end,
)
from gad.analysis.scoring import DiscriminatorScorer, as_messages, load_discriminator

__all__ = [
    "RUN_DIR_ENV",
    "DiscriminatorScorer",
    "as_messages",
    "correlation",
    "early_late_steps",
    "extreme_samples",
    "length_correlations",
    "load_discriminator",
    "load_metrics",
    "load_rollouts",
    "metrics_frame",
    "plot_length_over_training",
    "plot_method_curves",
    "plot_score_histograms",
    "plot_score_vs_length",
    "plot_training_curves",
    "resolve_run_dir",
    "rollouts_frame",
    "save_figure",
    "user_turn",
    "warmup_end",
]
