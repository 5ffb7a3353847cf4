"""Build everything from the composed config and fit: the body of `src/train.py`."""

from __future__ import annotations

import contextlib
import os
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning as L
from hydra.utils import get_object, instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from gad.checkpoint_io import AtomicCheckpointIO, restore_reference
from gad.config.method import MethodConfig
from gad.config.model import LoraConfig
from gad.config.registry import config_class
from gad.config.typed import typed
from gad.data.datamodule import DistillDataModule
from gad.distributed import TwoNetworkFSDPStrategy, finish_distributed
from gad.errors import GADError
from gad.trust import check_checkpoint, check_contents, check_sharded_checkpoint, load_checkpoint

# Expected here, and noise to a user: the frozen reference is in eval mode on purpose, and Lightning
# notes where it loads without weights_only set (every load of ours sets weights_only=True: gad.trust).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
warnings.filterwarnings("ignore", message=r".*weights_only.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
# peft (model.lora) asks transformers a deprecated question when it wraps a model.
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*is deprecated", category=FutureWarning)


def method_config(cfg: DictConfig) -> MethodConfig:
    """The composed `method` node as its validated config dataclass (gad.config.registry finds which)."""
    return typed(config_class(str(cfg.method._target_)), cfg.method, "method")


def build_module(cfg: DictConfig, tokenizer=None) -> L.LightningModule:
    """The method's LightningModule around a freshly loaded (or, from `config`, initialised) student: the module
    receives the validated config (`method_config`) and the validated `model.lora`."""
    config = method_config(cfg)
    # model.lora (absent from runs saved before it existed: LoRA off) is applied by the method,
    # which knows which networks copy the plain student before the generator gets adapters.
    lora = typed(LoraConfig, cfg.model.get("lora") or {}, "model.lora")
    tokenizer = tokenizer if tokenizer is not None else instantiate(cfg.model.tokenizer)
    student = instantiate(cfg.model.student)
    rows = student.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise GADError(f"model: the tokenizer has {len(tokenizer)} tokens but the student's embedding only {rows}")
    return get_object(config._target_)(config, student, tokenizer, lora)


class StopAtStep(L.Callback):
    """`trainer.max_steps`, in method steps: stop once the run has completed `max_steps` of them
    (counted from the run's start, so a resumed run stops at the same step). Lightning's own
    max_steps counts optimizer steps, two per GAD step. (None: only the method's own end.)

    A run resumed from a checkpoint of its last step stops before training: the method stops the
    trainer at the end of its last step (`DistillModule.end_step`), but a resume starts a new fit
    loop that would otherwise run one more step (`step 13/12`)."""

    def __init__(self, max_steps: int | None):
        self.max_steps = max_steps

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        end = pl_module.total_steps if self.max_steps is None else min(self.max_steps, pl_module.total_steps)
        if pl_module.completed_steps >= end:
            trainer.should_stop = True

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if self.max_steps is not None and pl_module.completed_steps >= self.max_steps:
            trainer.should_stop = True  # before StepCheckpoint runs, so it writes last.ckpt


class ResumeData(L.Callback):
    """Hands a resumed run's start to the data module (`DistillDataModule.start_at`): its train loader
    then continues with the batch an uninterrupted run would have seen at that step.

    The step is the method's counter, restored from the checkpoint: Lightning restores the module
    (`DistillModule.on_load_checkpoint`) before it calls the callbacks' `on_load_checkpoint`, and
    builds the train loader after both. A run that does not resume starts at step 0.
    """

    def __init__(self, datamodule: DistillDataModule):
        self.datamodule = datamodule

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.datamodule.start_at(pl_module.completed_steps)


@contextlib.contextmanager
def stop_on_interrupt(trainer: L.Trainer) -> Iterator[list[int]]:
    """Ctrl-C (SIGINT) stops the run the way Lightning stops on SIGTERM: the current step finishes,
    then the loop raises SIGTERMException, callbacks' `on_exception` save it. A second Ctrl-C
    abandons the step at once (KeyboardInterrupt). Yields the list of signals received."""
    received: list[int] = []

    def on_sigint(signum, frame) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        trainer._signal_connector.received_sigterm = True  # the flag Lightning's loops check after each step
        rank_zero_info("\ninterrupted: stopping after the current step (Ctrl-C again to abandon it)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous)


def check_resumable(path: str, module: L.LightningModule) -> None:
    """One line, before Lightning restores anything, for a checkpoint whose weights do not fit the run's
    model or whose counters are not counts (gad.trust.check_contents); read memory-mapped, so checking
    costs no second copy of the weights."""
    state = restore_reference(load_checkpoint(path, mmap=True), path)
    check_contents(state, path, module.state_dict())


class TrainingStarted(L.Callback):
    """Whether Lightning has finished restoring a checkpoint and started training."""

    def __init__(self) -> None:
        self.started = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = True


@contextlib.contextmanager
def restore_errors(ckpt_path: str | None, started: TrainingStarted) -> Iterator[None]:
    """An error while Lightning restores `ckpt_path` (a malformed loop, optimizer or scheduler state in a
    received file) is one line naming the file; errors once training has started pass through."""
    try:
        yield
    except GADError:
        raise
    except Exception as err:
        if not ckpt_path or started.started:
            raise
        text = str(err).strip().splitlines()
        raise GADError(
            f"ckpt_path: cannot resume from {ckpt_path}: {type(err).__name__}: {text[0] if text else ''}"
        ) from None


def train(cfg: DictConfig) -> float | None:
    """Train and return the final `optimized_metric` (default val/nll: needs no API, so sweepers can use it).
    `cfg` has passed `gad.config.validate.validate` (src/train.py checks it before importing this module)."""
    if cfg.get("ckpt_path") and not os.path.exists(cfg.ckpt_path):
        raise GADError(f"ckpt_path: no such checkpoint '{cfg.ckpt_path}'")
    if cfg.get("ckpt_path"):  # one line for a file that needs more than weights_only=True allows
        (check_sharded_checkpoint if os.path.isdir(cfg.ckpt_path) else check_checkpoint)(cfg.ckpt_path)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Resolved, so the run can be reloaded outside Hydra (gad.runs.load_module, the notebook).
    OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)

    tokenizer = instantiate(cfg.model.tokenizer)
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    datamodule.setup("fit")  # a malformed dump fails here, before any weights are loaded
    module = build_module(cfg, tokenizer)
    if cfg.get("ckpt_path") and os.path.isfile(cfg.ckpt_path):
        check_resumable(cfg.ckpt_path, module)

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    callbacks.insert(0, ResumeData(datamodule))
    max_steps = cfg.trainer.get("max_steps") or -1
    callbacks.insert(0, StopAtStep(max_steps if max_steps > 0 else None))
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers, max_steps=-1, plugins=[AtomicCheckpointIO()]
    )
    if (
        cfg.get("ckpt_path")
        and os.path.isdir(cfg.ckpt_path)
        and not isinstance(trainer.strategy, TwoNetworkFSDPStrategy)
    ):
        raise GADError(
            f"ckpt_path: '{cfg.ckpt_path}' is a sharded (FSDP) checkpoint; resume it with trainer=fsdp, "
            f"or make it one file first: python -m gad.checkpoint_io consolidate {cfg.ckpt_path}"
        )
    started = TrainingStarted()
    trainer.callbacks.append(started)
    try:
        with stop_on_interrupt(trainer) as interrupted, restore_errors(cfg.get("ckpt_path"), started):
            # weights_only=True: a resumed checkpoint may come from someone else and must not run code (gad.trust).
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
            results = trainer.validate(module, datamodule=datamodule, verbose=False)
    except SIGTERMException:
        # Lightning ends a SIGTERM'd run with SystemExit(None), i.e. exit 0: a scheduler would take
        # a preempted run for a finished one. Exit as a signal-killed process does (128 + signal).
        signum = interrupted[0] if interrupted else signal.SIGTERM
        rank_zero_info(f"stopped by {signal.Signals(signum).name} after step {module.completed_steps}")
        raise SystemExit(128 + signum) from None
    finally:
        # Lightning calls the module's teardown only after a fit that ended; on an error too, a sampler's engine
        # (vLLM) must shut down while the process group it uses still exists, or its exit handler fails noisily.
        module.teardown("fit")
        finish_distributed()
    return results[0].get(cfg.get("optimized_metric", "val/nll")) if results else None
