"""Export a run's figures as PNG: `python -m gad.analysis [--run RUN_DIR] [--out DIR] [FIGURE ...]`.

The run defaults to $GAD_RUN_DIR, else the newest run of outputs/train (the default
experiment); figures default to training_curves. README's figure is
`python -m gad.analysis --out docs/figures training_curves` after `python src/train.py`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from gad.analysis import plots  # noqa: E402
from gad.analysis.runs_data import load_metrics, load_rollouts, resolve_run_dir  # noqa: E402
from gad.errors import GADError, exit_on_user_error  # noqa: E402

FIGURES = {
    "training_curves": lambda run, m, r: plots.plot_training_curves(m, title=f"GAD training curves ({run.name})"),
    "score_histograms": lambda run, m, r: plots.plot_score_histograms(r()),
    "score_vs_length": lambda run, m, r: plots.plot_score_vs_length(r()),
    "length_over_training": lambda run, m, r: plots.plot_length_over_training(m, r()),
}


def export(run_dir: str | Path | None, out_dir: str | Path, names: list[str]) -> list[Path]:
    """Write `<out_dir>/<name>.png` for each figure name; returns the paths."""
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise GADError(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    run = resolve_run_dir(run_dir)
    metrics = load_metrics(run)
    rollouts = lambda: load_rollouts(run)  # noqa: E731  (only read when a figure needs it)
    return [plots.save_figure(FIGURES[n](run, metrics, rollouts), Path(out_dir) / f"{n}.png") for n in names]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gad.analysis", description=__doc__.splitlines()[0])
    parser.add_argument(
        "figures",
        nargs="*",
        default=["training_curves"],
        metavar="FIGURE",
        help=f"figures to export (default: training_curves); any of {', '.join(FIGURES)}",
    )
    parser.add_argument(
        "--run", default=None, help="run folder (default: $GAD_RUN_DIR, else the newest outputs/train run)"
    )
    parser.add_argument("--out", default="docs/figures", help="folder for the PNG files (default: docs/figures)")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        for path in export(args.run, args.out, args.figures):
            print(path)


if __name__ == "__main__":
    main()
