"""Evaluate students: `python src/eval.py [models={name: spec, ...}] [prompt_sets={name: file, ...}] [judge=gpt4o]`.

With no arguments, compares the newest training run before and after training on the toy
world's in- and out-of-distribution test splits (no judge). Generations, perplexities and judge
requests are cached under outputs/eval/cache: a re-run recomputes nothing. `select.run=<run>`
picks a checkpoint on a validation split instead. See conf/eval.yaml and docs/eval.md.
Exit status: 0 done, 3 some judge requests failed (re-run to finish), 2 bad input, 130 interrupted (Ctrl-C;
re-run to continue from the caches).
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
sys.path.insert(0, str(ROOT / "src"))  # runs from a checkout even without `pip install -e .`

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from gad.cli import run_cli, start  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    # Generations, perplexities and judge replies reach their journals as they come: Ctrl-C keeps them.
    start(
        cfg,
        "gad.evaluation.run:evaluate",
        check="gad.evaluation.config:check",
        returns_status=True,
        console=True,
        kept_on_interrupt="what was generated and judged so far is cached: re-run the same command to continue",
    )


if __name__ == "__main__":
    run_cli(main)
