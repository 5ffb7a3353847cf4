"""Distil a student: `python src/train.py [experiment=NAME] [key=value ...]`.

With no arguments, runs GAD on the embedded toy world (tiny student, CPU, offline).
See conf/train.yaml for the config groups and README.md for examples.
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


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return start(
        cfg,
        "gad.fit:train",
        check="gad.config.validate:validate",
        returns_status=False,
        console=True,
        prints_run_folder=True,
    )


if __name__ == "__main__":
    run_cli(main)
