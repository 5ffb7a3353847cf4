"""Dumps (records.py: the format, reading, validation) and their replay for training (datamodule.py).

The data module is imported lazily: the API tools need only the record format, not torch and Lightning.
"""

from gad.data.records import Columns, read_records, write_jsonl

__all__ = ["Columns", "DistillDataModule", "StepBatchSampler", "read_records", "write_jsonl"]


def __getattr__(name: str):
    if name in ("DistillDataModule", "StepBatchSampler"):
        from gad.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'gad.data' has no attribute {name!r}")
