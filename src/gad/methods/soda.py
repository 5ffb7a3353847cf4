"""SODA: Semi On-policy Distillation with Alignment (Chen, Wang, Zhu et al., 2026; arXiv 2604.03873).

Before the first step, the student writes ONE response to every training prompt (the snapshot,
gad/soda_snapshot.py: GAD's rollout sampling, exactly once per prompt, resumable) and a frozen copy of it
becomes the DPO reference. Each step then, for every row r of the batch (one per teacher response):
  chosen   = the teacher's response to prompt r          rejected = the snapshot's response to prompt r
  loss     = DPO's sigmoid loss on summed log-probs (gad/soda_losses.py; beta 0.1), + nll_weight x CE(chosen)
One forward of the generator over [chosen rows; rejected rows] per micro-batch (one backward through DDP's
wrapper), one of the reference without grad; no rollouts, no discriminator. Where the paper's available text
is silent, the choices are gad/soda_losses.py's module doc and gad.config.method.SODAConfig's knobs.

Where the snapshot lives: `<method.snapshot_cache>/soda_snapshot/<fingerprint>.jsonl` (paths.cache_dir by
default, so a run resumed into a new run folder finds it), the fingerprint covering the sampling, the seed,
a hash of the reference's weights and the prompts' token ids; its path is kept in the checkpoint and a copy
goes to `<run>/soda_snapshot.jsonl`. A resumed run reads it; if the file is gone, it is redrawn from the
restored reference, which holds the weights that drew it (the same responses on the same device).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gad.config.method import SODAConfig
from gad.errors import GADError
from gad.methods.base import DistillModule, micro_batches, packed_micro_batches
from gad.models import frozen_copy
from gad.soda_losses import sequence_logprobs, soda_loss
from gad.soda_snapshot import SnapshotSpec, read_snapshot, snapshot_file, snapshot_prompts, take_snapshot
from gad.teachers import per_teacher_means

SNAPSHOT_ENTRY = "soda_snapshot_path"  # the checkpoint entry naming the snapshot file the run trained on


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's state (names and bytes): identifies the weights that draw the snapshot."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def right_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> ids, mask [len(rows), longest] (right-padded)."""
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r, dtype=torch.long), 1
    return ids.to(device), mask.to(device)


class SODAModule(DistillModule):
    Config = SODAConfig

    def __init__(self, config: SODAConfig, student, tokenizer, lora=None):
        super().__init__(config, student, tokenizer, lora)
        self.steps, self.beta, self.nll_weight = config.steps, config.beta, config.nll_weight
        # Built now so a checkpoint always has the same keys; the student's weights are copied in when the
        # snapshot is taken (on_fit_start). `reference`/`reference_ready` are what gad.callbacks.StepCheckpoint
        # saves once, beside the checkpoints (reference.pt), as for GAD's KL reference.
        self.reference = frozen_copy(self.generator)
        self.reference_ready = False
        self.snapshot: dict[str, list[int]] = {}
        self.snapshot_path: str | None = None  # kept in the checkpoint: a resume reads the same file
        self.snapshot_tokens = 0  # tokens in the snapshot: the method's generation cost
        self.snapshot_seconds = 0.0  # wall time this process spent drawing it (0 when found already drawn)

    @property
    def total_steps(self) -> int:
        return self.steps

    def frozen_networks(self) -> list[torch.nn.Module]:
        return [self.reference]

    # ------------------------------------------------------------ the snapshot, once

    def on_fit_start(self) -> None:
        """After a resume's checkpoint is restored: a fresh run freezes the student as the reference now; both
        then draw (or find) the snapshot with the reference, which is the student as it was at step 0."""
        if not self.reference_ready:
            self.reference.load_state_dict(self.generator.state_dict())
            self.reference_ready = True
        self.snapshot = self.load_snapshot()

    def load_snapshot(self) -> dict[str, list[int]]:
        c = self.config.snapshot
        prompts = snapshot_prompts(self.trainer.datamodule.train_set)
        spec = SnapshotSpec(
            model_id=f"sha256:{weights_digest(self.reference)}",
            temperature=c.temperature,
            top_p=c.top_p,
            max_new_tokens=c.max_new_tokens,
            seed=self.seed,
            batch_size=c.batch_size,
        )
        ids = [p["id"] for p in prompts]
        path = snapshot_file(self.config.snapshot_cache, spec, prompts)
        recorded = Path(self.snapshot_path) if self.snapshot_path else None
        if recorded is not None and recorded.name == path.name and self._complete(recorded, ids):
            path = recorded  # where the checkpoint's run wrote it (another cache_dir): read, never written to
        elif self.global_rank == 0:
            start = time.perf_counter()
            take_snapshot(
                self.reference,
                prompts,
                path,
                spec,
                eos_ids=self.eos_ids,
                pad_id=self.tokenizer.pad_token_id,
                decode=self.tokenizer.decode,
            )
            self.snapshot_seconds = time.perf_counter() - start
        if self.global_rank == 0:
            run_dir = Path(self.trainer.default_root_dir)
            if run_dir.is_dir():  # a copy beside the run, for reading; the run never reads it back
                shutil.copyfile(path, run_dir / "soda_snapshot.jsonl")
        self.trainer.strategy.barrier("soda_snapshot")
        self.snapshot_path = str(path.resolve())
        snapshot = read_snapshot(path, ids)
        self.snapshot_tokens = sum(len(r) for r in snapshot.values())
        return snapshot

    @staticmethod
    def _complete(path: Path, ids: list[str]) -> bool:
        try:
            read_snapshot(path, ids)
        except GADError:
            return False
        return True

    # ------------------------------------------------------------ the step

    def chunks(self, batch: dict[str, Any], rejected_mask: torch.Tensor) -> list[slice | torch.Tensor]:
        """Micro-batches of the batch's rows; each runs chosen and rejected together (2 x its rows)."""
        n = batch["response_mask"].size(0)
        if not self.packed:
            return list(micro_batches(n, max(1, self.micro_batch_size // 2)))
        prompt = batch["prompt_mask"].sum(1)
        lengths = 2 * prompt + batch["response_mask"].sum(1) + rejected_mask.sum(1)
        return packed_micro_batches(lengths, self.max_tokens_per_micro_batch)

    def pair_logprobs(self, model, batch, rows, rejected_ids, rejected_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probs [n] of the chosen and the rejected responses of `rows`, in one forward."""
        chosen_ids, chosen_mask = batch["response_ids"][rows], batch["response_mask"][rows]
        width = max(chosen_ids.size(1), rejected_ids.size(1))
        responses = torch.cat(
            [F.pad(chosen_ids, (0, width - chosen_ids.size(1)), value=self.tokenizer.pad_token_id), rejected_ids[rows]]
        )
        masks = torch.cat([F.pad(chosen_mask, (0, width - chosen_mask.size(1))), rejected_mask[rows]])
        prompts, prompt_mask = batch["prompt_ids"][rows], batch["prompt_mask"][rows]
        logp = self.response_logprobs(
            model, torch.cat([prompts, prompts]), torch.cat([prompt_mask] * 2), responses, masks
        )
        summed = sequence_logprobs(logp, masks)
        n = chosen_ids.size(0)
        return summed[:n], summed[n:]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, float]:
        rejected_ids, rejected_mask = right_pad(
            [self.snapshot[i] for i in batch["ids"]], self.tokenizer.pad_token_id, self.device
        )
        rows_total = len(batch["ids"])
        chosen_tokens = batch["response_mask"].sum().clamp(min=1)
        chunks = self.chunks(batch, rejected_mask)
        parts = []
        with self.timed("g_step"):
            for i, rows in enumerate(chunks):
                with torch.no_grad():
                    ref_chosen, ref_rejected = self.pair_logprobs(
                        self.reference, batch, rows, rejected_ids, rejected_mask
                    )
                with self.network("generator", sync=i == len(chunks) - 1) as generator:
                    chosen, rejected = self.pair_logprobs(generator, batch, rows, rejected_ids, rejected_mask)
                    terms = soda_loss(chosen, rejected, ref_chosen, ref_rejected, beta=self.beta)
                    # Weighted by the chunk's share of the rows: the step's loss is the mean over all its pairs.
                    loss = terms.loss * chosen.size(0) / rows_total
                    # CE per chosen token over the whole batch (token-mean, as SeqKD's): -sum log p / tokens.
                    nll = -chosen.sum() / chosen_tokens
                    self.manual_backward(loss + self.nll_weight * nll if self.nll_weight else loss)
                parts.append((terms, loss.detach(), nll.detach()))
            grad_norm = self.step_optimizer("generator")
        reward_c = torch.cat([t.chosen_reward for t, _, _ in parts])
        reward_r = torch.cat([t.rejected_reward for t, _, _ in parts])
        order = torch.cat(
            [torch.arange(rows_total, device=self.device)[rows] for rows in chunks]
        ).argsort()  # batch order
        reward_c, reward_r = reward_c[order], reward_r[order]
        margin = reward_c - reward_r
        metrics = {
            "train/soda_loss": sum(loss for _, loss, _ in parts),
            "train/sft_loss": sum(nll for _, _, nll in parts),  # the chosen responses' CE, trained on or not
            "train/pref_acc": (margin > 0).float().mean(),
            "train/margin": margin.mean(),
            "train/chosen_reward": reward_c.mean(),
            "train/rejected_reward": reward_r.mean(),
            "train/grad_norm_g": grad_norm,
            "train/teacher_len": batch["response_mask"].sum(-1).float().mean(),
            "train/snapshot_len": rejected_mask.sum(-1).float().mean(),
            # the method's whole generation cost, drawn once before step 1 (every step: the same number)
            "train/snapshot_tokens": float(self.snapshot_tokens),
            "train/snapshot_s": self.snapshot_seconds,  # its drawing time in this run (0: drawn by an earlier one)
        }
        teachers = batch.get("teachers")
        if teachers and len(set(teachers)) > 1:
            for name, value in per_teacher_means(reward_c, teachers).items():
                metrics[f"train/chosen_reward/{name}"] = value
        return self.end_step(metrics, batch)

    # ------------------------------------------------------------ checkpoint state

    # distill_state holds counters only (gad.trust checks a received checkpoint's); the path has its own entry.
    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "reference_ready": self.reference_ready}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.reference_ready = bool(state.get("reference_ready", False))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[SNAPSHOT_ENTRY] = self.snapshot_path

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        path = checkpoint.get(SNAPSHOT_ENTRY)
        self.snapshot_path = path if isinstance(path, str) else None  # read only if complete: load_snapshot
