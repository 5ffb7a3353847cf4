"""Segmented rollouts (method.rollout_segment_tokens): finished rows stop decoding, samples keep their law."""

from __future__ import annotations

import pytest
import torch
from conftest import PAD, TINY

from gad.losses import response_mask
from gad.models import load_student
from gad.rollout import decode_row_steps, generation_config, sample

# A random model rarely picks one given token: with an eighth of the vocabulary ending a response
# (and weights large enough that greedy decoding does not loop on one token), rows end after a few
# tokens, at different steps, under greedy decoding too.
EOS = list(range(0, 256, 8))


def prompts(rows: int = 5, width: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (rows,), generator=g)
    mask = (torch.arange(width) >= width - lengths[:, None]).long()
    return torch.randint(0, 256, (rows, width), generator=g).masked_fill(mask == 0, PAD), mask


def rollout(model, segment, *, greedy=False, seed=1, share=False, call_rows=8, max_new_tokens=24):
    config = generation_config(max_new_tokens=max_new_tokens, eos_ids=EOS, pad_id=PAD, temperature=0.9, greedy=greedy)
    torch.manual_seed(seed)
    ids, mask = prompts()
    return sample(
        model,
        ids,
        mask,
        num_samples=3,
        config=config,
        eos_ids=torch.tensor(EOS),
        micro_batch_size=call_rows,
        share_prompt=share,
        segment_tokens=segment,
    )


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_student(config={**TINY, "initializer_range": 0.5}).eval()


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("segment", [1, 3, 8])
def test_greedy_segments_give_the_single_calls_tokens(model, segment, share):
    old, new = rollout(model, None, greedy=True, share=share), rollout(model, segment, greedy=True, share=share)
    assert len(set(old.lengths.tolist())) > 2  # rows end at different steps: some leave early
    # Exact tokens: greedy picks the argmax, and initializer_range=0.5 spreads the logits far wider than the
    # rounding that separates the segmented forwards (fewer rows per matmul) from the single call's.
    assert torch.equal(new.response_mask, old.response_mask)
    assert torch.equal(new.response_ids * new.response_mask, old.response_ids * old.response_mask)


def test_sampling_is_a_function_of_the_seed(model):
    a, b, c = rollout(model, 3), rollout(model, 3), rollout(model, 3, seed=2)
    assert torch.equal(a.response_ids, b.response_ids) and not torch.equal(a.response_ids, c.response_ids)
    assert torch.equal(a.response_mask, response_mask(a.response_ids, torch.tensor(EOS)))
    # one segment as long as the cap is the single call: the same ops and draws, bit for bit on this machine
    assert torch.equal(rollout(model, 24).response_ids, rollout(model, None).response_ids)


def test_segments_sample_softmax_of_logits_over_t(model):
    """The second token's frequencies given the first, over many draws, match softmax(logits / T):
    the draw after a segment boundary (segment=1) comes from the same law as inside a call."""
    config = generation_config(max_new_tokens=2, eos_ids=[258], pad_id=PAD, temperature=0.9)
    ids, mask = prompts(rows=1)
    torch.manual_seed(3)
    out = sample(
        model,
        ids,
        mask,
        num_samples=4000,
        config=config,
        eos_ids=torch.tensor([258]),
        micro_batch_size=4000,
        segment_tokens=1,
    )
    first = torch.mode(out.response_ids[:, 0]).values
    rows = out.response_ids[out.response_ids[:, 0] == first]
    seq = torch.cat([ids, first.view(1, 1)], dim=1)
    with torch.no_grad():
        probs = torch.softmax(
            model(seq, attention_mask=torch.cat([mask, mask.new_ones(1, 1)], 1)).logits[0, -1] / 0.9, -1
        )
    freq = torch.bincount(rows[:, 1], minlength=probs.numel()).double() / rows.size(0)
    assert rows.size(0) > 20
    assert (freq - probs.double()).abs().sum() < 4 * (probs.numel() / rows.size(0)) ** 0.5  # L1 within sampling noise


@pytest.mark.parametrize("segment", [None, 1, 3, 8])
def test_decode_row_steps_counts_the_forwards_sample_runs(model, segment):
    rows = []
    hook = model.register_forward_pre_hook(
        lambda _, args, kwargs: rows.append(kwargs["input_ids"].size(0)), with_kwargs=True
    )
    try:
        out = rollout(model, segment, call_rows=6)
    finally:
        hook.remove()
    assert sum(rows) == decode_row_steps(out.lengths, 6, segment)
    if segment:
        assert sum(rows) < decode_row_steps(out.lengths, 6, None)


def _synced_rank(rank: int, port: int, results) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = load_student(config={**TINY, "initializer_range": 0.5}).eval()
    config = generation_config(max_new_tokens=24, eos_ids=EOS, pad_id=PAD, temperature=0.9)
    ids, mask = prompts(rows=4, seed=rank)  # ranks hold different rows, ending at different steps
    outs = []
    for synced in (True, False):
        torch.manual_seed(10 + rank)
        outs.append(
            sample(
                model,
                ids,
                mask,
                num_samples=2,
                config=config,
                eos_ids=torch.tensor(EOS),
                micro_batch_size=4,
                segment_tokens=3,
                synced_gpus=synced,
            ).response_ids
        )
    results[rank] = (outs[0].tolist(), outs[1].tolist())
    torch.distributed.destroy_process_group()


def test_synced_ranks_step_together_and_sample_what_they_would_alone():
    """FSDP (synced_gpus): ranks with different numbers of segments and calls all finish (no rank waits
    forever in a collective), and each rank's samples are the ones it draws alone from its seed."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.start_processes(_synced_rank, args=(port, results), nprocs=2, start_method="fork", join=True)
    for rank in (0, 1):
        synced, alone = results[rank]
        assert synced == alone
    assert results[0][0] != results[1][0]
