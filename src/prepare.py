"""Prepare prompt sets: `python src/prepare.py source.kind=<lmsys|lmsys_clean|gad_release|local> source.path=<id or path> out_dir=<dir>`.

Writes <out_dir>/train.jsonl and <out_dir>/test.jsonl (canonical records) and prints how many
rows every filter dropped. See conf/prepare.yaml and docs/collect.md.
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


@hydra.main(version_base="1.3", config_path="../conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    start(cfg, "gad.teacher_data.prepare:main", returns_status=True)


if __name__ == "__main__":
    run_cli(main)
