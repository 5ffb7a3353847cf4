"""Held-out toy-world accuracy, checked by the toy teacher's own program, before and after training."""

from __future__ import annotations

import lightning as L

from gad.data.records import read_records
from gad.rollout import generate_texts
from gad.toy.check import accuracy


class ToyAccuracy(L.Callback):
    """Greedy-decodes the first `limit` prompts of each split at fit start and at train end."""

    def __init__(self, splits: dict[str, str], limit: int = 100, max_new_tokens: int = 32, batch_size: int = 100):
        self.splits = {name: read_records(path)[0][:limit] for name, path in splits.items()}
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.before: dict[str, float] = {}

    def measure(self, pl_module: L.LightningModule) -> dict[str, float]:
        out = {}
        for name, records in self.splits.items():
            texts = generate_texts(
                pl_module.generator, pl_module.tokenizer, [r["messages"] for r in records],
                max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, eos_ids=pl_module.eos_ids,
            )
            out[name] = accuracy(records, texts)
        return out

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.before = self.measure(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        after = self.measure(pl_module)
        summary = next((cb for cb in trainer.callbacks if hasattr(cb, "add_result")), None)
        for name, value in after.items():
            if summary is not None:
                summary.add_result(f"toy accuracy ({name})", before=self.before.get(name, float("nan")), after=value)
