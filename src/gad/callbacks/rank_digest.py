"""Per-rank fingerprints of a distributed run: are the ranks' weights identical, their rollouts not?"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L

from gad.distributed import full_tensor
from gad.step_record import TrainingModule


def tensor_digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class RankDigest(L.Callback):
    """Writes `<dirpath>/ranks/rank<r>.json`: a digest of each step's rollout tokens and,
    at the end, of every trained parameter. Under DDP the parameter digests must agree
    across ranks and the rollout digests must not (each rank samples its own prompts)."""

    def __init__(self, dirpath: str):
        self.dir = Path(dirpath) / "ranks"
        self.rollouts: list[str] = []

    def on_train_batch_end(self, trainer, pl_module: TrainingModule, outputs, batch, batch_idx: int) -> None:
        record = pl_module.last_step
        if record is not None and record.rollout is not None:
            self.rollouts.append(tensor_digest([record.rollout.response_ids]))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Under FSDP each rank holds shards: digest the whole (gathered) parameters.
        trained = [full_tensor(p) for net in pl_module.networks.values() for p in net.module.parameters()]
        self.dir.mkdir(parents=True, exist_ok=True)
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "parameters": tensor_digest(trained),
            "rollouts": self.rollouts,
        }
        (self.dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
