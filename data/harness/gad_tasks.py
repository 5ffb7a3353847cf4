"""Datasets of the local harness tasks in this folder (`custom_dataset: !function gad_tasks.<name>`).

lm-evaluation-harness imports this file when it loads one of the tasks: the files are found next to it,
whatever the working directory (a `data_files` path in the YAML would be relative to it).
"""

from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def split(file: str, **_) -> datasets.DatasetDict:
    """The canonical JSONL `file` (relative to this folder) as the task's `test` split."""
    return datasets.load_dataset("json", data_files={"test": str((HERE / file).resolve())})
