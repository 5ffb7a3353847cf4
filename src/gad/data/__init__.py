from gad.data.datamodule import DistillDataModule, StepBatchSampler
from gad.data.records import Columns, read_records, write_jsonl

__all__ = ["Columns", "DistillDataModule", "StepBatchSampler", "read_records", "write_jsonl"]
