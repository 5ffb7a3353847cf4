"""The discriminator D: a copy of the student's trunk (as in the paper) plus a linear head hidden -> 1
that reads the hidden state of the last response token. Its losses are in gad.losses (Bradley-Terry, BCE).

That token is found from the response mask, not from padding, so a response that ends with a
token equal to the pad id (Qwen's <|endoftext|> is both) is still scored at the right place.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import PreTrainedModel

from gad.packing import packed_forward_after_prompt
from gad.prompt_sharing import forward_after_prompt


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
        """Initialised from the student's weights, as in the paper (a copy, not shared).

        Copy it from the plain student: adding LoRA to the generator modifies the student in place.
        """
        trunk = copy.deepcopy(student.base_model)
        return cls(trunk, student.config.get_text_config().hidden_size)

    def forward(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
        group_size: int = 1,
        packed: bool = False,
    ) -> torch.Tensor:
        """Scores [rows] of `[pad.. prompt | response ..pad]` rows, read at each last response token.

        `group_size` > 1: consecutive rows share their prompt, which runs once per group.
        `packed`: the rows run as one padding-free sequence (gad.packing).
        """
        if packed:
            hidden = packed_forward_after_prompt(self.trunk, prompt_ids, prompt_mask, response_ids, response_mask)
        else:
            hidden = forward_after_prompt(self.trunk, prompt_ids, prompt_mask, response_ids, response_mask, group_size)
        # hidden[:, 0] is the last prompt token, so the last response token sits at index `length`.
        last = hidden[torch.arange(hidden.size(0), device=hidden.device), response_mask.sum(-1).long()]
        return self.head(last.to(self.head.weight.dtype)).squeeze(-1)
