"""The three networks of GAD: student (generator), discriminator, frozen reference.

The discriminator is a copy of the student's trunk plus a linear head hidden -> 1 that reads
the hidden state of the last response token. The index is passed explicitly rather than
inferred from padding, so a response that ends with a token equal to the pad id (Qwen's
<|endoftext|> is both) is still scored at the right place.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from gad.errors import GADError
from gad.losses import position_ids

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _load_failure(what: str, name: str, err: Exception) -> GADError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in str(err).lower()
    why = "the Hugging Face hub is unreachable (offline) and it is not in the local cache" if offline else type(err).__name__
    return GADError(f"cannot load {what} '{name}': {why}")


def load_tokenizer(path: str, pad_token: str | None = None) -> PreTrainedTokenizerBase:
    """A tokenizer with left padding (prompts are left-padded for batched generation).

    `pad_token` sets a pad token for tokenizers that have none (Llama 3); it should not be
    an eos token, so that padding is never mistaken for the end of a response.
    """
    try:
        tok = AutoTokenizer.from_pretrained(path, padding_side="left")
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
) -> PreTrainedModel:
    """A pretrained causal LM from a hub id or folder, or one built from `config` (random init)."""
    if dtype not in DTYPES:
        raise GADError(f"model.student.dtype: '{dtype}' is not one of {sorted(DTYPES)}")
    kwargs = {"dtype": DTYPES[dtype], "attn_implementation": attn_implementation}
    if name_or_path is not None:
        try:
            model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
        except (OSError, ValueError) as err:
            raise _load_failure("student model", name_or_path, err) from None
    elif config is not None:
        config = dict(config)
        model_config = AutoConfig.for_model(config.pop("model_type"), **config)
        model = AutoModelForCausalLM.from_config(model_config, **kwargs)
    else:
        raise GADError("model.student: set either name_or_path (pretrained) or config (from scratch)")
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy with gradients off, in eval mode: the KL reference policy."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


class Discriminator(nn.Module):
    """Student trunk + scalar head, scoring the last token of each response."""

    def __init__(self, trunk: PreTrainedModel, hidden_size: int):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(hidden_size, 1)
        std = getattr(trunk.config, "initializer_range", 0.02)
        nn.init.normal_(self.head.weight, std=std)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_student(cls, student: PreTrainedModel) -> Discriminator:
        """Initialised from the student's weights, as in the paper (a copy, not shared)."""
        trunk = copy.deepcopy(student.base_model)
        return cls(trunk, student.config.get_text_config().hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, score_index: torch.Tensor) -> torch.Tensor:
        """Scores [B] read at `score_index` [B] (the last response token of each row)."""
        hidden = self.trunk(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            use_cache=False,
        ).last_hidden_state
        last = hidden[torch.arange(hidden.size(0), device=hidden.device), score_index]
        return self.head(last.to(self.head.weight.dtype)).squeeze(-1)
