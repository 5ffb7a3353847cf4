"""Finding and reloading training runs: `<run>/config.yaml` + `<run>/checkpoints/*.ckpt`.

A run folder holds: config.yaml (the composed config, resolved), metrics.csv, rollouts.jsonl,
summary.json, checkpoints/{last,step_<k>}.ckpt and, once training ends, student/.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from gad.checkpoint_io import load_sharded, restore_reference
from gad.config.renamed import upgrade
from gad.config.validate import validate_received
from gad.errors import GADError
from gad.fit import build_module
from gad.received_paths import confine
from gad.trust import check_contents, check_received_config, check_sharded_checkpoint, load_checkpoint

MAX_CONFIG_BYTES = 1 << 20  # a composed run config is a few KB; a larger file is not one


def run_config(run_dir: str | Path) -> DictConfig:
    """A run's config.yaml, refused (one line) if loading the run would call anything but this
    project's own targets (gad.trust) or read a file outside the run and the project
    (gad.received_paths): a run folder may come from someone else. Folders a load writes into
    (conversion and data caches) are this project's own. Keys renamed since the run was written
    are read with their new names (gad.config.renamed)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise GADError(f"{run_dir}: not a training run folder (no config.yaml)")
    check_own_file(path, run_dir)
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise GADError(f"{path}: refused: {path.stat().st_size} bytes is not a run config (at most {MAX_CONFIG_BYTES})")
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:
        raise GADError(f"{path}: not a readable config ({' '.join(str(err).split())})") from None
    if not isinstance(cfg, DictConfig):
        raise GADError(f"{path}: not a training run config (not a mapping)")
    check_received_config(cfg, path)
    upgrade(cfg)
    validate_received(cfg, str(path))  # a value of the wrong type or range: one line, before anything is built
    confine(cfg, path, run_dir)  # files it names stay inside the run or the project; writes go to our cache
    return cfg


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
    check_own_file(ckpt, run_dir)
    if ckpt.is_dir():  # FSDP's per-rank shards (trainer=fsdp), read whole
        check_sharded_checkpoint(ckpt)  # torch.distributed.checkpoint unpickles its metadata freely
        try:
            state = load_sharded(ckpt)
        except Exception as err:
            raise GADError(
                f"{ckpt}: not a readable sharded checkpoint ({type(err).__name__}: {first_line(err)})"
            ) from None
    else:
        state = load_checkpoint(ckpt, map_location=device)  # refuses an unsafe file before any weights load
    restore_reference(state, ckpt)  # GAD's KL reference is saved once, beside the checkpoints
    with built_from(Path(run_dir) / "config.yaml"):
        module = build_module(cfg)
    check_contents(state, ckpt, module.state_dict())  # one line for another model's weights or odd counters
    with built_from(ckpt):
        module.load_state_dict(state["state_dict"])
        module.on_load_checkpoint(state)
    return module.to(device).eval()


@contextlib.contextmanager
def built_from(file: Path) -> Iterator[None]:
    """Whatever building a run from a received `file` raises is one line naming that file: a value the
    typed checks do not cover (transformers' own arguments, say) fails inside a library."""
    try:
        yield
    except GADError:
        raise
    except Exception as err:
        cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ is not None else err
        if isinstance(cause, GADError):
            raise GADError(f"{file}: {cause}") from None
        raise GADError(f"{file}: cannot build the run from it ({type(cause).__name__}: {first_line(cause)})") from None


def check_own_file(path: Path, run_dir: str | Path) -> None:
    """Refuse a run's file that is a link to somewhere outside the run folder (a received run folder may
    point its checkpoints or config at any file on this machine)."""
    if not path.resolve().is_relative_to(Path(run_dir).resolve()):
        raise GADError(f"{path}: refused: it is a link to {path.resolve()}, outside the run folder {run_dir}")


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
