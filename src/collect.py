"""Collect teacher responses: `python src/collect.py prompts=<file> output=<file> [teacher=openai|vllm] [key=value ...]`.

Sends every prompt to an OpenAI-compatible chat-completions endpoint and appends one canonical
record per prompt to `output`; re-running the same command resumes. The API key is read from the
environment variable named by `teacher.api_key_env` (OPENAI_API_KEY by default).
Exit status: 0 all answered or rejected, 3 some prompts still missing (re-run), 2 bad input or a
run-stopping API error (rejected key, exhausted quota). See conf/collect.yaml and docs/collect.md.
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


@hydra.main(version_base="1.3", config_path="../conf", config_name="collect")
def main(cfg: DictConfig) -> None:
    start(cfg, "gad.teacher_data.collect:collect", returns_status=True)


if __name__ == "__main__":
    run_cli(main)
