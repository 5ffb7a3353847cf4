"""One forward per prompt, not one per sample: the N responses of a group share their prompt.

GAD samples N responses per prompt and runs D, G and the reference over every
`[prompt | response]` row of the rollout, so the rows of a group repeat the same prompt N times
(N + 1 for D, which also reads the teacher's response). The rollout's prefill uses the same cache. Here the prompt goes through the network once, its keys and values are repeated
across the group (`repeat_interleave` is differentiable: the prompt's gradient is summed over
the group, as it is when every row recomputes it), and only the responses run per row.
The outputs, and the gradients through them, equal the row-by-row forward's up to float
rounding (tests/test_prompt_sharing.py). What it saves grows with prompt length / response
length and with N.

Transformers drops a KV cache under gradient checkpointing in training mode, so a network
that trains with checkpointing on takes the row-by-row path (`can_share_prompt`); so do forwards
that will be backpropagated through a network sharded with FSDP2: the gradient reaches the
prompt's forward through its cached keys and values, not through the blocks' outputs where FSDP
gathers the weights again for backward, so it would find them freed. Forwards without gradient
(the reference, a frozen D's scores) share the prompt under both.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule

from gad.losses import position_ids


def can_share_prompt(model: nn.Module) -> bool:
    """False where a shared prompt would go wrong: under gradient checkpointing while training
    (transformers drops the cache) and before a backward through an FSDP-sharded network."""
    model = getattr(model, "module", model)  # a DDP wrapper
    if torch.is_grad_enabled() and any(isinstance(m, FSDPModule) for m in model.modules()):
        return False
    # (transformers 5.23 renamed is_gradient_checkpointing, which now warns, to is_activation_checkpointing)
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    return not (model.training and checkpointing)


def forward_after_prompt(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    continuation_ids: torch.Tensor,
    continuation_mask: torch.Tensor,
    group_size: int = 1,
    **kwargs,
) -> torch.Tensor:
    """`model`'s output (logits, or hidden states of a bare trunk) at the last prompt position
    and at each continuation position: [rows, 1 + C, ...].

    Rows are `[pad.. prompt | continuation ..pad]` (prompts left-padded to P, continuations
    right-padded to C); rows i*k .. i*k + k - 1 hold the same prompt when `group_size` = k > 1,
    which then runs once. Pass `logits_to_keep` for a causal LM; it is ignored (one position
    kept) for the shared prompt. Position 0 of the result predicts the first continuation token.
    """
    width, kept = prompt_ids.size(1), continuation_ids.size(1) + 1
    mask = torch.cat([prompt_mask, continuation_mask], dim=1)
    positions = position_ids(mask)
    if group_size == 1 or width < 2 or not can_share_prompt(model):
        out = model(
            input_ids=torch.cat([prompt_ids, continuation_ids], dim=1),
            attention_mask=mask,
            position_ids=positions,
            use_cache=False,
            **kwargs,
        )
        return out[0][:, -kept:]
    head_kwargs = {"logits_to_keep": 1} if "logits_to_keep" in kwargs else {}  # a causal LM: one row of unused logits
    cache = prompt_cache(model, prompt_ids, prompt_mask, group_size, **head_kwargs)
    out = model(
        input_ids=torch.cat([prompt_ids[:, -1:], continuation_ids], dim=1),
        attention_mask=mask,
        position_ids=positions[:, width - 1 :],
        cache=cache,
        use_cache=True,
        **kwargs,
    )
    return out[0]


def prompt_cache(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, group_size: int, **kwargs):
    """The KV cache of every row's prompt but its last token, computed once per group of `group_size`
    rows that repeat a prompt and repeated across the group. Run the rows' last prompt token (and what
    follows) against it: every row's first output then comes from a forward of its own."""
    unique = prompt_ids[::group_size]
    if not torch.equal(prompt_ids, unique.repeat_interleave(group_size, dim=0)):
        raise ValueError(f"rows do not come in groups of {group_size} sharing a prompt")
    head_ids, head_mask = unique[:, :-1], prompt_mask[::group_size, :-1]
    cache = model(
        input_ids=head_ids, attention_mask=head_mask, position_ids=position_ids(head_mask), use_cache=True, **kwargs
    ).cache
    cache.batch_repeat_interleave(group_size)
    return cache
