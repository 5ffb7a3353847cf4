"""The body of `python src/eval.py`: evaluate the configured models (`gad.evaluation.evaluate`), or,
with `select.run`, pick a checkpoint of a training run (`gad.evaluation.select`), and report.

Both build on `gad.evaluation.evaluate.score`; this module is the only one that knows of both, so
the imports go one way: run -> select -> evaluate.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console

from gad.evaluation.evaluate import EXIT_INCOMPLETE, load_sets, resolve_models, score
from gad.evaluation.harness import harness_for
from gad.evaluation.report import write_outputs
from gad.evaluation.select import select_checkpoint


def evaluate(cfg: DictConfig) -> int:
    """Run what the config asks for; returns the exit status (0, or 3 when judge requests are missing).
    `cfg` has passed `gad.evaluation.config.check` (src/eval.py checks it before importing this module)."""
    console = Console(stderr=True)
    out_dir = Path(cfg.paths.output_dir)
    if cfg.select.get("run"):
        return select_checkpoint(cfg, out_dir, console)
    models = resolve_models(cfg)
    sets = load_sets(cfg)
    harness = harness_for(cfg, models)  # task names and offline datasets checked before any model loads
    evaluation = score(models, sets, cfg, console, harness=harness)
    write_outputs(evaluation, out_dir, cfg)
    status = 0
    if harness is not None and harness.failures:
        console.print(
            f"[yellow]{len(harness.failures)} harness (model, task) pairs failed (listed above and in "
            "summary.json); re-run the same command to retry them[/yellow]"
        )
        status = EXIT_INCOMPLETE
    if evaluation.incomplete:
        console.print(
            f"[yellow]{evaluation.incomplete} prompts have no complete judge verdict (requests failed); "
            "re-run the same command to finish them[/yellow]"
        )
        status = EXIT_INCOMPLETE
    return status
