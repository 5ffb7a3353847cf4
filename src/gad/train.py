"""Build everything from the composed config and fit: the body of `src/train.py`."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gad.config import validate
from gad.distributed import finish_distributed
from gad.errors import GADError
from gad.trust import check_checkpoint

# Expected here, and noise to a user: the frozen reference is in eval mode on purpose, and
# our own checkpoints are trusted pickles (they hold optimizer and loop state).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
warnings.filterwarnings("ignore", message=r".*weights_only.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
# peft (model.lora) asks transformers a deprecated question when it wraps a model.
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*is deprecated", category=FutureWarning)


def build_module(cfg: DictConfig, tokenizer=None) -> L.LightningModule:
    """The method's LightningModule around a freshly loaded (or, from `config`, initialised) student."""
    tokenizer = tokenizer if tokenizer is not None else instantiate(cfg.model.tokenizer)
    student = instantiate(cfg.model.student)
    rows = student.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise GADError(f"model: the tokenizer has {len(tokenizer)} tokens but the student's embedding only {rows}")
    # model.lora (absent from runs saved before it existed: LoRA off) is applied by the method,
    # which knows which networks copy the plain student before the generator gets adapters.
    return instantiate(cfg.method, student=student, tokenizer=tokenizer, lora=cfg.model.get("lora"))


def train(cfg: DictConfig) -> float | None:
    """Train and return the final `optimized_metric` (default val/nll: needs no API, so sweepers can use it)."""
    validate(cfg)
    if cfg.get("ckpt_path") and not os.path.isfile(cfg.ckpt_path):
        raise GADError(f"ckpt_path: no such checkpoint '{cfg.ckpt_path}'")
    if cfg.get("ckpt_path"):
        check_checkpoint(cfg.ckpt_path)  # one line for a file that needs more than weights_only=True allows
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Resolved, so the run can be reloaded outside Hydra (gad.runs.load_module, the notebook).
    OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)

    tokenizer = instantiate(cfg.model.tokenizer)
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    datamodule.setup("fit")  # a malformed dump fails here, before any weights are loaded
    module = build_module(cfg, tokenizer)

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    try:
        # weights_only=True: a resumed checkpoint may come from someone else and must not run code (gad.trust).
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
        results = trainer.validate(module, datamodule=datamodule, verbose=False)
    finally:
        finish_distributed()
    return results[0].get(cfg.get("optimized_metric", "val/nll")) if results else None
