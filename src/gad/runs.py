"""Finding and reloading training runs: `<run>/config.yaml` + `<run>/checkpoints/*.ckpt`.

A run folder holds: config.yaml (the composed config, resolved), metrics.csv, rollouts.jsonl,
summary.json, checkpoints/{last,step_<k>}.ckpt and, once training ends, student/.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from gad.checkpoint_io import load_sharded, restore_reference
from gad.errors import GADError
from gad.train import build_module


def run_config(run_dir: str | Path) -> DictConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise GADError(f"{run_dir}: not a training run folder (no config.yaml)")
    return OmegaConf.load(path)


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The periodic checkpoints of a run, in step order (last.ckpt excluded)."""
    return sorted((Path(run_dir) / "checkpoints").glob("step_*.ckpt"))


def latest_run(task_dir: str | Path) -> Path:
    """The newest run folder under `outputs/<task_name>/runs/`."""
    runs = sorted(p for p in (Path(task_dir) / "runs").glob("*") if (p / "config.yaml").is_file())
    if not runs:
        raise GADError(f"{task_dir}: no runs found under {Path(task_dir) / 'runs'}")
    return runs[-1]


def load_module(run_dir: str | Path, ckpt: str | Path | None = None, device: str = "cpu"):
    """Rebuild a run's LightningModule from its config and load a checkpoint (default: last.ckpt)."""
    cfg = run_config(run_dir)
    ckpt = Path(ckpt) if ckpt is not None else Path(run_dir) / "checkpoints" / "last.ckpt"
    if not ckpt.exists():
        raise GADError(f"{ckpt}: no such checkpoint")
    module = build_module(cfg)
    # a folder: FSDP's per-rank shards (trainer=fsdp), read whole
    state = load_sharded(ckpt) if ckpt.is_dir() else torch.load(ckpt, map_location=device, weights_only=False)
    restore_reference(state, ckpt)  # GAD's KL reference is saved once, beside the checkpoints
    module.load_state_dict(state["state_dict"])
    module.on_load_checkpoint(state)
    return module.to(device).eval()
