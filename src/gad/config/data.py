"""`data`: the typed definition of the teacher-data replay's config node (gad.data.DistillDataModule).

Each knob's default and meaning: conf/data/toy.yaml (the other data presets start from it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from gad.config.bounds import require_fits, workers_rule
from gad.config.typed import require
from gad.data.records import Columns


@dataclass
class DataConfig:
    _target_: str
    path: Optional[str]
    split: str
    columns: Columns
    skip_invalid: bool
    max_prompt_tokens: int
    max_response_tokens: int
    truncation: str
    system_prompt: str
    end_of_turn: Optional[str]
    val_size: int
    batch_size: int
    val_batch_size: Optional[int]
    seed: int
    cache_dir: Optional[str]
    num_workers: int

    def __post_init__(self) -> None:
        require(bool(self.path), "path", self.path, "required, but not set (add data.path=<dump> to the command line)")
        for key in ("max_prompt_tokens", "max_response_tokens", "batch_size"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "must be an integer >= 1")
        require(
            self.val_batch_size is None or self.val_batch_size >= 1,
            "val_batch_size",
            self.val_batch_size,
            "must be null or an integer >= 1",
        )
        require(self.val_size >= 0, "val_size", self.val_size, "must be an integer >= 0")
        require(self.num_workers >= 0, "num_workers", self.num_workers, "must be an integer >= 0")
        require(self.truncation in ("left", "drop"), "truncation", self.truncation, "must be 'left' or 'drop'")
        # upper bounds (gad/config/bounds.py: what this machine can hold, its CPUs)
        require(
            not workers_rule(self.num_workers), "num_workers", self.num_workers, str(workers_rule(self.num_workers))
        )
        for key in ("batch_size", "val_batch_size"):
            lengths = {"max_prompt_tokens": self.max_prompt_tokens, "max_response_tokens": self.max_response_tokens}
            require_fits({key: getattr(self, key) or 1}, lengths)
