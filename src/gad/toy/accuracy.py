"""Held-out toy-world accuracy and response length, checked by the toy teacher's own program,
before and after training."""

from __future__ import annotations

import lightning as L

from gad.callbacks.summary import RunSummary
from gad.chat import with_system_prompt
from gad.data.records import read_records
from gad.distributed import gathered, is_sharded
from gad.rollout import generate_texts
from gad.toy.check import accuracy


class ToyAccuracy(L.Callback):
    """Greedy-decodes the first `limit` prompts of each split at fit start and at train end, and reports
    accuracy and the length ratio to the teacher (mean student tokens / mean teacher tokens)."""

    def __init__(
        self,
        splits: dict[str, str],
        limit: int = 100,
        max_new_tokens: int = 32,
        batch_size: int = 100,
        system_prompt: str = "none",
    ):
        self.splits = {name: read_records(path)[0][:limit] for name, path in splits.items()}
        self.system_prompt = system_prompt  # training's data.system_prompt (gad.chat)
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.before: dict[str, float] = {}

    def measure(self, pl_module: L.LightningModule) -> dict[str, float]:
        out = {}
        for name, records in self.splits.items():
            with gathered(pl_module.generator, getattr(pl_module, "reshard_after_forward", True)):
                texts = generate_texts(
                    pl_module.generator,
                    pl_module.tokenizer,
                    [with_system_prompt(r["messages"], self.system_prompt, pl_module.tokenizer) for r in records],
                    max_new_tokens=self.max_new_tokens,
                    batch_size=self.batch_size,
                    eos_ids=pl_module.eos_ids,
                    synced_gpus=is_sharded(pl_module.generator),
                )
            out[f"toy accuracy ({name})"] = accuracy(records, texts)
            out[f"len / teacher ({name})"] = self.mean_tokens(pl_module, texts) / self.mean_tokens(
                pl_module, [r["response"] for r in records]
            )
        return out

    @staticmethod
    def mean_tokens(pl_module: L.LightningModule, texts: list[str]) -> float:
        return sum(len(pl_module.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts) / max(
            len(texts), 1
        )

    @staticmethod
    def measures_here(trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        # Rank 0 decodes; a sharded generator's forward is a collective, so then every rank does.
        return trainer.is_global_zero or is_sharded(pl_module.generator)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.measures_here(trainer, pl_module):
            self.before = self.measure(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.measures_here(trainer, pl_module):
            return
        after = self.measure(pl_module)
        summary = next((cb for cb in trainer.callbacks if isinstance(cb, RunSummary)), None)
        if summary is None or not trainer.is_global_zero:
            return
        for name, value in after.items():
            summary.add_result(name, before=self.before.get(name, float("nan")), after=value)
