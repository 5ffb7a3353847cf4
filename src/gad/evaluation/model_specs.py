"""Model specs: what `models.<name>=<spec>` may name, its cache fingerprint, and loading it.

A spec is one of
  <run dir>                     a training run of this project (config.yaml): its checkpoints/last.ckpt
  <run dir>/checkpoints/X.ckpt  one checkpoint of a run
  latest                        the newest run under <paths.log_dir>/train/runs (also in the forms below)
  init:<run dir>|init:latest    the run's student BEFORE training: its config's student rebuilt with the
                                run's seed (random init for a from-scratch student such as the toy one,
                                the pretrained weights for a hub student)
  <folder>                      a Hugging Face model folder (config.json), e.g. a run's exported student/
  <owner/name>                  a hub id (the "before distillation" baseline, e.g. Qwen/Qwen2.5-3B-Instruct)

The fingerprint identifies the weights (and tokenizer) the spec resolves to, so cached generations
follow the weights, not the name: a rewritten checkpoint gets a new fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gad.errors import GADError

RUN, CKPT, INIT, FOLDER, HUB = "run", "checkpoint", "init", "folder", "hub"


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _stat(path: Path) -> list[Any]:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


@dataclass
class ModelSpec:
    """A resolved spec. `kind` is one of run | checkpoint | init | folder | hub."""

    name: str
    spec: str
    kind: str
    path: str  # checkpoint file, run dir (init), folder, or hub id
    run_dir: str | None = None
    fingerprint: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.kind}: {self.path}"


def resolve_spec(name: str, spec: Any, log_dir: str | os.PathLike) -> ModelSpec:
    """Turn a `models.<name>` value into a `ModelSpec` (no weights are loaded)."""
    from gad.runs import latest_run

    if not isinstance(spec, str) or not spec.strip():
        raise GADError(f"models.{name}: expected a run folder, checkpoint, model folder or hub id, got {spec!r}")
    raw = spec.strip()
    text = raw
    init = text.startswith("init:")
    if init:
        text = text[len("init:") :]
    if text == "latest":
        text = str(latest_run(Path(log_dir) / "train"))
    path = Path(text).expanduser()
    if init:
        if not (path / "config.yaml").is_file():
            raise GADError(f"models.{name}: '{raw}': init: needs a training run folder (with config.yaml)")
        return _finish(ModelSpec(name, raw, INIT, str(path.resolve()), run_dir=str(path.resolve())))
    if path.exists() and path.suffix == ".ckpt":  # a file, or a folder of FSDP shards
        run_dir = path.resolve().parent.parent
        if not (run_dir / "config.yaml").is_file():
            raise GADError(
                f"models.{name}: '{raw}': a checkpoint must sit in <run>/checkpoints/ (no config.yaml in {run_dir})"
            )
        return _finish(ModelSpec(name, raw, CKPT, str(path.resolve()), run_dir=str(run_dir)))
    if path.is_dir() and (path / "config.yaml").is_file():
        ckpt = path / "checkpoints" / "last.ckpt"
        if not ckpt.exists():
            raise GADError(f"models.{name}: '{raw}': the run has no checkpoints/last.ckpt yet")
        return _finish(ModelSpec(name, raw, RUN, str(ckpt.resolve()), run_dir=str(path.resolve())))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise GADError(
                f"models.{name}: '{raw}': folder is neither a training run (config.yaml) nor a model (config.json)"
            )
        return _finish(ModelSpec(name, raw, FOLDER, str(path.resolve())))
    if path.exists():
        raise GADError(f"models.{name}: '{raw}': not a run folder, .ckpt file or model folder")
    if text.count("/") > 1 or text.startswith((".", "/", "~")):
        raise GADError(f"models.{name}: '{raw}': no such file or folder")
    return _finish(ModelSpec(name, raw, HUB, text))


def _finish(spec: ModelSpec) -> ModelSpec:
    spec.fingerprint = fingerprint(spec)
    return spec


def fingerprint(spec: ModelSpec) -> str:
    """A hash of what the weights are: file identity (path, size, mtime) or the init recipe."""
    if spec.kind in (RUN, CKPT):
        parts: Any = [CKPT, _stat(Path(spec.path))]
    elif spec.kind == INIT:
        from omegaconf import OmegaConf

        from gad.runs import run_config

        cfg = run_config(spec.run_dir)
        parts = [INIT, OmegaConf.to_container(cfg.model, resolve=True), cfg.get("seed")]
    elif spec.kind == FOLDER:
        folder = Path(spec.path)
        parts = [FOLDER, [_stat(f) for f in sorted(folder.iterdir()) if f.is_file()]]
    else:
        parts = [HUB, spec.path, _hub_revision(spec.path)]
    return _sha(parts)[:16]


def _hub_revision(repo_id: str) -> str | None:
    """The cached snapshot's commit, when the model is in the local hub cache."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True)).name
    except Exception:
        return None


# ---------------------------------------------------------------------------------------- loading
def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_tokenizer_for(spec: ModelSpec):
    """The spec's tokenizer (cheap: no weights), with left padding for batched generation."""
    from hydra.utils import instantiate

    from gad.models import load_tokenizer
    from gad.runs import built_from, run_config

    if spec.run_dir is not None:
        cfg = run_config(spec.run_dir)
        with built_from(Path(spec.run_dir) / "config.yaml"):
            return instantiate(cfg.model.tokenizer)
    return load_tokenizer(spec.path)


def load_model_for(
    spec: ModelSpec, tokenizer, *, device: str = "auto", dtype: str = "auto", attn_implementation: str = "sdpa"
):
    """(model in eval mode on `device`, eos ids). `dtype` applies to folders and hub ids
    (auto: bfloat16 on GPU, float32 on CPU); run checkpoints keep their run's dtype."""
    from hydra.utils import instantiate

    from gad.models import load_student
    from gad.runs import built_from, load_module, run_config

    device = resolve_device(device)
    if spec.kind in (RUN, CKPT):
        module = load_module(spec.run_dir, spec.path, device=device)
        return module.generator.eval(), list(module.eos_ids)
    if spec.kind == INIT:
        cfg = run_config(spec.run_dir)
        with torch.random.fork_rng(devices=[]), built_from(Path(spec.run_dir) / "config.yaml"):
            torch.manual_seed(int(cfg.seed))  # as src/train.py: seed, then build the student
            model = instantiate(cfg.model.student)
    else:
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        model = load_student(name_or_path=spec.path, dtype=dtype, attn_implementation=attn_implementation)
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    return model.to(device).eval(), sorted({*eos, tokenizer.eos_token_id})
