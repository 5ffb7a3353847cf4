"""Checkpoints on the method's own step counter (Lightning's global_step counts optimizer steps)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from gad.checkpoint_io import REFERENCE_ENTRY, REFERENCE_FILE, REFERENCE_PREFIX, link_atomic, save_atomic
from gad.errors import user_error


class StepCheckpoint(L.Callback):
    """Writes `step_<k>.ckpt` every `every_n_steps` method steps, and `last.ckpt` then, at the end,
    and when a run stops early (SIGTERM, Ctrl-C, an exception between steps).

    `last.ckpt` always holds a completed step: a step interrupted part-way (some optimizer already
    stepped) is never saved, and `last.ckpt` keeps the step before. A periodic save serialises
    once: `last.ckpt` is a hard link to (or, where links fail, a copy of) `step_<k>.ckpt`.

    GAD's frozen KL reference (`reference.*`, as large as the student) is left out of every file:
    from the end of warm-up it is saved once, to `reference.pt` beside them, and before that it is
    an unused copy of the generator. `gad.checkpoint_io.restore_reference` puts it back on load.
    """

    def __init__(self, dirpath: str, every_n_steps: int = 50, save_last: bool = True):
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.save_last = save_last
        self.saved_step: int | None = None  # the step last.ckpt holds (None: not written by this run)
        self.in_step = False  # an optimizer has stepped in a step that has not ended yet
        self.reference_saved = False  # this process wrote reference.pt
        self.started = False  # training began: a failure before it (restoring a checkpoint) has nothing to save

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = True
        for optimizer in trainer.optimizers:  # mark the step as part-done once anything changed
            optimizer.register_step_post_hook(self._optimizer_stepped)

    def _optimizer_stepped(self, optimizer, args, kwargs) -> None:
        self.in_step = True

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self.in_step = False
        step = pl_module.completed_steps
        periodic = self.every_n_steps > 0 and step % self.every_n_steps == 0
        if periodic:
            self.save_step(trainer, step)
        elif self.save_last and trainer.should_stop:
            self.save_last_checkpoint(trainer, pl_module)

    def save_step(self, trainer: L.Trainer, step: int) -> None:
        """`step_<step>.ckpt`, and `last.ckpt` as the same bytes (serialised once)."""
        path = self.dirpath / f"step_{step:06d}.ckpt"
        trainer.save_checkpoint(path)
        if self.save_last:
            if trainer.is_global_zero:
                link_atomic(path, self.last_path)
            trainer.strategy.barrier("StepCheckpoint.link")
            self.saved_step = step

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get("state_dict", {})
        # Per-rank shards (FSDP save_distributed_checkpoint) load into the whole module: keep them complete.
        # A frozen policy the method keeps (GAD's KL reference, `GADModule.reference`), if any
        if getattr(pl_module, "reference", None) is None or getattr(
            trainer.strategy, "_save_distributed_checkpoint", False
        ):
            return
        reference = {k: state.pop(k) for k in [k for k in state if k.startswith(REFERENCE_PREFIX)]}
        if not pl_module.reference_ready:
            checkpoint[REFERENCE_ENTRY] = "generator"
            return
        if not self.reference_saved:  # it never changes after warm-up: once per run (and per resumed job)
            if trainer.is_global_zero:  # under FSDP only rank 0 holds the gathered weights
                save_atomic(reference, self.dirpath / REFERENCE_FILE)
            self.reference_saved = True
        checkpoint[REFERENCE_ENTRY] = REFERENCE_FILE

    def save_last_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.last_path)
        self.saved_step = pl_module.completed_steps

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A run that trained no step (resumed from a checkpoint of its last one) still leaves its own last.ckpt."""
        if self.save_last and self.saved_step != pl_module.completed_steps:
            self.save_last_checkpoint(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Save the last completed step, if it can be done safely, before the run ends."""
        step = pl_module.completed_steps
        if not self.save_last or not self.started or user_error(exception) is not None:
            return  # a user error (a failed save among them): nothing to add to it
        if self.in_step:
            kept = f"step {self.saved_step}" if self.saved_step is not None else "what it held"
            rank_zero_warn(f"step {step + 1} was interrupted part-way: not saved; {self.last_path} keeps {kept}")
            return
        if self.saved_step == step:
            return  # already saved
        # Saving is a collective under DDP/FSDP: only safe when every rank stops here, as all do on SIGTERM.
        if trainer.world_size > 1 and not isinstance(exception, SIGTERMException):
            rank_zero_warn(f"stopped by an error on one rank: {self.last_path} not updated past step {self.saved_step}")
            return
        self.save_last_checkpoint(trainer, pl_module)
        rank_zero_info(f"saved step {step} to {self.last_path} (resume with ckpt_path={self.last_path})")
