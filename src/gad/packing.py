"""Padding-free training forwards: the rows of a micro-batch packed into one sequence.

A batch lays rows out as `[pad.. prompt | response ..pad]`, at the width of the batch's longest
prompt plus its longest response. With chat-like lengths (long tails up to the caps) most of that
width is padding (bench/bench_padding.py). Here a micro-batch's rows are instead concatenated,
real tokens only, into one row of at most `max_tokens` tokens, with position ids restarting at 0
for each row and no attention mask: transformers 5 then builds the block-diagonal causal mask
from the position ids (sdpa, eager, flex; flash-attention 2 runs it varlen), so every row sees
only itself, at the positions it has in the padded layout. Outputs equal the padded forward's up
to float rounding (tests/test_packing.py).

Micro-batches are chosen by a token budget (`plan_packs`), so the largest forward, and with it
activation memory, no longer depends on the longest row of the whole batch.
"""

from __future__ import annotations

import torch
from torch import nn


def plan_packs(sizes: list[int], max_tokens: int) -> list[list[int]]:
    """Units (rows, or groups of rows that must share a forward) into packs of at most `max_tokens`
    tokens: first fit, longest unit first. A unit larger than the budget gets a pack of its own.
    Each pack lists its units in increasing order; packs are ordered by their first unit.
    """
    packs: list[list[int]] = []
    room: list[int] = []
    for unit in sorted(range(len(sizes)), key=lambda u: (-sizes[u], u)):
        for i, left in enumerate(room):
            if sizes[unit] <= left:
                packs[i].append(unit)
                room[i] -= sizes[unit]
                break
        else:
            packs.append([unit])
            room.append(max_tokens - sizes[unit])
    return sorted((sorted(p) for p in packs), key=lambda p: p[0])


def _layout(prompt_mask: torch.Tensor, continuation_mask: torch.Tensor):
    """Where each row's real tokens go in the packed row: the real-token mask of `[prompt | continuation]`
    rows, position ids restarting per row [1, T], and each row's start and prompt length."""
    real = torch.cat([prompt_mask, continuation_mask], dim=1).bool()
    lengths = real.sum(1)
    starts = lengths.cumsum(0) - lengths
    positions = torch.arange(int(lengths.sum()), device=real.device) - starts.repeat_interleave(lengths)
    return real, positions.unsqueeze(0), starts, prompt_mask.sum(1)


def packed_forward_after_prompt(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    continuation_ids: torch.Tensor,
    continuation_mask: torch.Tensor,
) -> torch.Tensor:
    """`gad.prompt_sharing.forward_after_prompt`'s result ([rows, 1 + C, ...]: the output at the last
    prompt token and at each continuation position), computed on the rows packed into one sequence.
    Positions past a row's end repeat its last output. For outputs narrow enough to lay out per row
    (a trunk's hidden states); a causal LM's logits go through `packed_response_logits` instead."""
    real, positions, starts, prompt_len = _layout(prompt_mask, continuation_mask)
    ids = torch.cat([prompt_ids, continuation_ids], dim=1)[real].unsqueeze(0)
    out = model(input_ids=ids, attention_mask=None, position_ids=positions, use_cache=False)[0][0]
    last = (starts + real.sum(1) - 1).unsqueeze(1)
    index = (
        starts.unsqueeze(1)
        + prompt_len.unsqueeze(1)
        - 1
        + torch.arange(continuation_ids.size(1) + 1, device=ids.device)
    )
    return out[torch.minimum(index, last)]


def packed_response_logits(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """A causal LM's logits for the real response tokens only, flat: [response_mask.sum(), V], in the
    row-major order of `response_mask` (the logits predicting `response_ids[response_mask.bool()]`).
    Only those positions go through the LM head (`logits_to_keep` as indices)."""
    real, positions, starts, prompt_len = _layout(prompt_mask, response_mask)
    ids = torch.cat([prompt_ids, response_ids], dim=1)[real].unsqueeze(0)
    # Response token j of row i is predicted at packed position starts[i] + prompt_len[i] - 1 + j.
    rows, cols = response_mask.bool().nonzero(as_tuple=True)
    keep = starts[rows] + prompt_len[rows] - 1 + cols
    return model(input_ids=ids, attention_mask=None, position_ids=positions, use_cache=False, logits_to_keep=keep)[0][0]
