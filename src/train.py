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

from gad.errors import exit_on_user_error, run_cli  # noqa: E402
import gad.run_folder  # noqa: E402,F401  # the ${gad.run_id:} resolver of run folder names


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from gad.train import train  # heavy imports after composition keeps --help and --cfg fast
    from gad.console import setup as setup_console  # third-party bars and info logs off unless verbose=true

    with exit_on_user_error():
        setup_console(cfg, run_dir=cfg.paths.output_dir)
        return train(cfg)


if __name__ == "__main__":
    run_cli(main)
