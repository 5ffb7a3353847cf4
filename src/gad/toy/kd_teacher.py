"""A teacher model for the toy world, which ships no trained teacher model.

The toy world's teacher is a program; KD needs a teacher with token distributions. So the
first `method=kd` run on the toy world fits one: a from-scratch Qwen2-style model trained
with cross-entropy on the toy dump's teacher responses (plain PyTorch, no Lightning), saved
as a Hugging Face folder with its tokenizer and the recipe (`build.json`), once (under a lock
beside the folder, published by rename; see `ensure_teacher_model`). Later runs load the folder. A folder that already exists without `build.json` (any model you point
`method.teacher.path` at) is used as it is; one built from a different recipe is refused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerBase

from gad.atomic import discard, file_lock, publish_dir, staging_dir
from gad.errors import GADError
from gad.losses import masked_sum, position_ids, token_logprobs

RECIPE_KEYS = {"data", "config", "steps", "batch_size", "lr", "max_prompt_tokens", "max_response_tokens", "seed"}


def read_recipe(path: str | Path) -> dict[str, Any] | None:
    file = Path(path) / "build.json"
    return json.loads(file.read_text()) if file.is_file() else None


def is_complete(path: str | Path) -> bool:
    """A published build: `build.json` is written last, after the config and the weights."""
    return all((Path(path) / name).is_file() for name in ("build.json", "config.json", "model.safetensors"))


def save_teacher(model, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """A Hugging Face folder, written by whichever process builds it. (`save_pretrained` writes no
    weights on a rank other than 0 of an initialised process group: under DDP, rank 1 used to
    publish a folder with only the tokenizer.)"""
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def ensure_teacher_model(path: str, tokenizer: PreTrainedTokenizerBase, recipe: dict[str, Any]) -> None:
    """Build the teacher folder at `path` from `recipe` unless it is there already.

    Built once: every process (the ranks of a DDP run, concurrent runs) takes a lock beside the
    folder; the first builds while the others wait, then find the folder complete and load it.
    It is written under a temporary name and renamed into place, so a build killed half-way
    leaves nothing under `path`; an incomplete folder there (earlier versions could leave one)
    is rebuilt, not trusted.
    """
    unknown = set(recipe) - RECIPE_KEYS
    if unknown:
        raise GADError(
            f"method.teacher.build.{sorted(unknown)[0]}: unknown key (known: {', '.join(sorted(RECIPE_KEYS))})"
        )
    recipe = json.loads(json.dumps(recipe, default=str))  # plain, comparable with the stored one
    dest = Path(path)
    with file_lock(dest.parent / f".{dest.name}.lock"):
        if dest.exists():
            stored = read_recipe(dest)
            if stored is None and (dest / "config.json").is_file():
                return  # a model folder of the user's own (no recipe): used as it is
            if stored is not None and stored != recipe:
                raise GADError(
                    f"method.teacher.path: {path} was built from a different method.teacher.build recipe; "
                    "delete that folder to rebuild it, or set another path"
                )
            if is_complete(dest):
                return
            print(f"[kd] {path} is an unfinished build (no weights or no build.json): rebuilding it", flush=True)
            discard(dest)
        print(
            f"[kd] fitting the toy teacher model ({recipe['steps']} steps) into {path}; later runs reuse it", flush=True
        )
        start = time.perf_counter()
        model = fit_teacher(tokenizer, **recipe)
        staging = staging_dir(dest)
        save_teacher(model, tokenizer, staging)
        (staging / "build.json").write_text(json.dumps(recipe, indent=2))  # last: marks the folder complete
        publish_dir(staging, dest)
        print(f"[kd] toy teacher ready in {time.perf_counter() - start:.0f} s", flush=True)


def fit_teacher(
    tokenizer: PreTrainedTokenizerBase,
    *,
    data: str,
    config: dict[str, Any],
    steps: int,
    batch_size: int,
    lr: float,
    max_prompt_tokens: int,
    max_response_tokens: int,
    seed: int,
):
    """Cross-entropy on a dump's teacher responses: AdamW, 5% linear warm-up, linear decay, clip 1."""
    from gad.data.datamodule import DistillDataModule

    data_module = DistillDataModule(
        tokenizer,
        data,
        max_prompt_tokens=max_prompt_tokens,
        max_response_tokens=max_response_tokens,
        val_size=0,
        batch_size=batch_size,
        seed=seed,
        cache_dir=None,
    )
    data_module.setup("fit")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        config = dict(config)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    model.train()
    for step, batch in enumerate(data_module.train_dataloader()):
        if step >= steps:
            break
        ids = torch.cat([batch["prompt_ids"], batch["response_ids"]], dim=1)
        attn = torch.cat([batch["prompt_mask"], batch["response_mask"]], dim=1)
        width = batch["response_ids"].size(1)
        logits = model(
            input_ids=ids,
            attention_mask=attn,
            position_ids=position_ids(attn),
            logits_to_keep=width + 1,
            use_cache=False,
        ).logits[:, :-1]
        mask = batch["response_mask"]
        loss = -masked_sum(token_logprobs(logits, batch["response_ids"]), mask) / mask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
    return model.eval()
