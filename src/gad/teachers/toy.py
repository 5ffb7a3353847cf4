"""A teacher model for the toy world, which ships no trained teacher model.

The toy world's teacher is a program; KD needs a teacher with token distributions. So the
first `method=kd` run on the toy world fits one: a from-scratch Qwen2-style model trained
with cross-entropy on the toy dump's teacher responses (plain PyTorch, no Lightning), saved
as a Hugging Face folder with its tokenizer and the recipe (`build.json`). Later runs load
the folder. A folder that already exists without `build.json` (any model you point
`method.teacher.path` at) is used as it is; one built from a different recipe is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerBase

from gad.errors import GADError
from gad.losses import masked_sum, position_ids, token_logprobs

RECIPE_KEYS = {"data", "config", "steps", "batch_size", "lr", "max_prompt_tokens", "max_response_tokens", "seed"}


def read_recipe(path: str | Path) -> dict[str, Any] | None:
    file = Path(path) / "build.json"
    return json.loads(file.read_text()) if file.is_file() else None


def ensure_teacher_model(path: str, tokenizer: PreTrainedTokenizerBase, recipe: dict[str, Any]) -> None:
    """Build the teacher folder at `path` from `recipe` unless it is there already."""
    unknown = set(recipe) - RECIPE_KEYS
    if unknown:
        raise GADError(f"method.teacher.build.{sorted(unknown)[0]}: unknown key (known: {', '.join(sorted(RECIPE_KEYS))})")
    recipe = json.loads(json.dumps(recipe, default=str))  # plain, comparable with the stored one
    if Path(path).exists():
        stored = read_recipe(path)
        if stored is not None and stored != recipe:
            raise GADError(f"method.teacher.path: {path} was built from a different method.teacher.build recipe; "
                           "delete that folder to rebuild it, or set another path")
        return
    print(f"[kd] fitting the toy teacher model ({recipe['steps']} steps) into {path}; later runs reuse it", flush=True)
    start = time.perf_counter()
    model = fit_teacher(tokenizer, **recipe)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=Path(path).parent))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "build.json").write_text(json.dumps(recipe, indent=2))
    try:
        os.rename(staging, path)  # atomic: a concurrent run sees either nothing or the whole folder
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another run finished first: use its folder
    print(f"[kd] toy teacher ready in {time.perf_counter() - start:.0f} s", flush=True)


def fit_teacher(
    tokenizer: PreTrainedTokenizerBase, *, data: str, config: dict[str, Any], steps: int, batch_size: int, lr: float,
    max_prompt_tokens: int, max_response_tokens: int, seed: int,
):
    """Cross-entropy on a dump's teacher responses: AdamW, 5% linear warm-up, linear decay, clip 1."""
    from gad.data.datamodule import DistillDataModule

    data_module = DistillDataModule(tokenizer, data, max_prompt_tokens=max_prompt_tokens,
                                    max_response_tokens=max_response_tokens, val_size=0, batch_size=batch_size,
                                    seed=seed, cache_dir=None)
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
        logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn),
                       logits_to_keep=width + 1, use_cache=False).logits[:, :-1]
        mask = batch["response_mask"]
        loss = -masked_sum(token_logprobs(logits, batch["response_ids"]), mask) / mask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
    return model.eval()
