"""Sampling from the student: on-policy rollouts for training, greedy decoding for evaluation.

A method's rollout goes through a `Sampler` (the small, stable seam below): `HFSampler`, transformers'
`generate` on the live student, is the default; another engine (e.g. vLLM) implements the same two calls.

The policy gradient is only correct if the samples come from exactly softmax(logits / T).
transformers 5 fills every generation field left unset from the model's own
`generation_config` (Qwen2.5-Instruct ships top_k=20, top_p=0.8, repetition_penalty=1.05),
so every logits warper is pinned to its neutral value here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from transformers import GenerationConfig, PreTrainedModel

from gad.distributed import gathered
from gad.losses import response_mask
from gad.prompt_sharing import prompt_cache

NEUTRAL_WARPERS = dict(
    top_k=0,
    typical_p=1.0,
    min_p=None,
    epsilon_cutoff=0.0,
    eta_cutoff=0.0,
    repetition_penalty=1.0,
    no_repeat_ngram_size=0,
    num_beams=1,
)


def generation_config(
    *,
    max_new_tokens: int,
    eos_ids: list[int],
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
) -> GenerationConfig:
    sampling = {} if greedy else dict(temperature=temperature, top_p=top_p)
    # top_k acts only when sampling; set on a greedy config, transformers warns that it is ignored.
    warpers = {k: v for k, v in NEUTRAL_WARPERS.items() if not (greedy and k == "top_k")}
    return GenerationConfig(
        do_sample=not greedy,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        use_cache=True,
        **sampling,
        **warpers,
    )


@dataclass
class Rollout:
    """Student samples for a batch of B prompts, N per prompt, laid out prompt-major [B*N, ...].

    Prompts are left-padded to P tokens and responses right-padded to R tokens, so each
    row is `[pad.. prompt | response ..pad]` and the response occupies the last R columns.
    """

    prompt_ids: torch.Tensor  # [B*N, P]
    prompt_mask: torch.Tensor  # [B*N, P]
    response_ids: torch.Tensor  # [B*N, R]
    response_mask: torch.Tensor  # [B*N, R] 1 up to and including the first eos
    num_samples: int
    sampler_logprobs: torch.Tensor | None = None  # [B*N, R] the sampler's own log-probs of the tokens, if it gave them

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)


# ---------------------------------------------------------------------------------------------- the seam
@dataclass
class SampledRows:
    """What a `Sampler` returns for P prompts and N samples each: P x N rows, prompt-major (row i answers prompt
    i // N). `response_ids[i]`: the sampled tokens up to and including the first end-of-sequence token, or
    `max_new_tokens` of them; `logprobs[i]` (optional): the sampler's log-probability of each of those tokens."""

    response_ids: list[list[int]]
    logprobs: list[list[float]] | None = None


@runtime_checkable
class Sampler(Protocol):
    """Draws a rollout's responses (`DistillModule.rollout`). Two calls, kept small and stable:

    - `sync_weights(module)`: called before each rollout with the method's module (a `DistillModule`; its
      `generator` holds the current weights). A sampler with its own copy of the weights (an inference engine)
      loads them here; `HFSampler` samples from the live network and only notes which one.
    - `sample(prompt_ids, *, num_samples, temperature, top_p, max_new_tokens, seed)`: `prompt_ids` are the
      prompts' token ids, chat template applied, no padding. Each token must be drawn from exactly
      softmax(logits / temperature), nucleus-cut at `top_p` (1.0: off), with no other warper (the policy
      gradient's log-probs assume it); sampling stops at the student's end-of-sequence tokens or after
      `max_new_tokens`. The samples are a function of `seed` (the same seed, the same weights: the same rows),
      so a resumed run samples what an uninterrupted one did.
    """

    def sync_weights(self, module: Any) -> None: ...

    def sample(
        self,
        prompt_ids: list[list[int]],
        *,
        num_samples: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> SampledRows: ...


class HFSampler:
    """The default `Sampler`: transformers' `generate` on the live student (`sample` below): neutral warpers,
    `micro_batch_size` sequences per call, each prompt's prefill once per group with `share_prompt`, decoding
    in segments of `segment_tokens`; under FSDP every rank steps together (`synced_gpus`)."""

    def __init__(
        self,
        *,
        eos_ids: list[int],
        pad_id: int,
        micro_batch_size: int,
        share_prompt: bool = False,
        segment_tokens: int | None = None,
    ):
        self.eos_ids, self.pad_id, self.micro_batch_size = eos_ids, pad_id, micro_batch_size
        self.share_prompt, self.segment_tokens = share_prompt, segment_tokens
        self.module: Any = None

    def sync_weights(self, module: Any) -> None:
        self.module = module  # nothing to copy: `sample` runs the module's generator as it stands

    @torch.no_grad()
    def sample(
        self,
        prompt_ids: list[list[int]],
        *,
        num_samples: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> SampledRows:
        assert self.module is not None, "sync_weights(module) first"
        model = self.module.generator
        ids, mask = left_pad(prompt_ids, self.pad_id, model.device)
        config = generation_config(
            max_new_tokens=max_new_tokens,
            eos_ids=self.eos_ids,
            pad_id=self.pad_id,
            temperature=temperature,
            top_p=top_p,
        )
        devices = [ids.device] if ids.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), gathered(model, self.module.reshard_after_forward):
            torch.manual_seed(seed)
            rollout = sample(
                model,
                ids,
                mask,
                num_samples=num_samples,
                config=config,
                eos_ids=torch.tensor(self.eos_ids),
                micro_batch_size=self.micro_batch_size,
                # Sharded, every forward is a collective: ranks that finish early keep stepping.
                synced_gpus=self.module.sharded,
                share_prompt=self.share_prompt,
                segment_tokens=self.segment_tokens,
            )
        return SampledRows([row[:n].tolist() for row, n in zip(rollout.response_ids, rollout.lengths.tolist())])


def left_pad(
    rows: list[list[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows as left-padded ids and mask [len(rows), longest] (the layout of a batch's prompts)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :], mask[i, width - len(row) :] = torch.tensor(row, dtype=torch.long), 1
    return ids.to(device), mask.to(device)


def rollout_from_rows(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    rows: SampledRows,
    num_samples: int,
    pad_id: int,
    eos_ids: list[int],
) -> Rollout:
    """A sampler's rows as a `Rollout` of the batch's prompts ([B, P] each): prompts repeated per sample, responses
    right-padded with `pad_id` to the longest (at least one column), masks up to and including the first eos."""
    width = max(1, max(len(r) for r in rows.response_ids))
    responses = prompt_ids.new_full((len(rows.response_ids), width), pad_id)
    logprobs = None if rows.logprobs is None else torch.zeros(responses.shape, device=responses.device)
    for i, row in enumerate(rows.response_ids):
        responses[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        if logprobs is not None:
            logprobs[i, : len(row)] = torch.tensor(rows.logprobs[i], dtype=torch.float32)
    eos = torch.tensor(eos_ids, device=responses.device)
    return Rollout(
        prompt_ids.repeat_interleave(num_samples, dim=0),
        prompt_mask.repeat_interleave(num_samples, dim=0),
        responses,
        response_mask(responses, eos),
        num_samples,
        logprobs,
    )


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    num_samples: int,
    config: GenerationConfig,
    eos_ids: torch.Tensor,
    micro_batch_size: int,
    synced_gpus: bool = False,
    share_prompt: bool = False,
    segment_tokens: int | None = None,
) -> Rollout:
    """Draw `num_samples` responses per prompt, `micro_batch_size` sequences per `generate` call.

    Runs in eval mode so gradient checkpointing (which disables the KV cache) is off during
    decoding; the previous mode is restored afterwards. `share_prompt`: each prompt's prefill runs
    once, not once per sample (gad.prompt_sharing), and a call holds whole groups (at least one).
    `segment_tokens`: decode in segments of this many tokens and drop the rows that ended
    (`generate_segmented`); None: one `generate` per call, every row decoded until the call's longest ends.
    """
    was_training = model.training
    model.eval()
    prompt_ids = prompt_ids.repeat_interleave(num_samples, dim=0)
    prompt_mask = prompt_mask.repeat_interleave(num_samples, dim=0)
    width = prompt_ids.size(1)
    shared = share_prompt and num_samples > 1 and width > 1
    if shared:
        micro_batch_size = max(1, micro_batch_size // num_samples) * num_samples
    chunks = []
    for start in range(0, prompt_ids.size(0), micro_batch_size):
        ids, mask = prompt_ids[start : start + micro_batch_size], prompt_mask[start : start + micro_batch_size]
        cache = prompt_cache(model, ids, mask, num_samples, logits_to_keep=1) if shared else None
        if segment_tokens:
            chunks.append(generate_segmented(model, ids, mask, cache, config, eos_ids, segment_tokens, synced_gpus))
            continue
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            cache=cache,
            generation_config=config,
            synced_gpus=synced_gpus,
        )
        chunks.append(out[:, width:])
    model.train(was_training)
    responses = _right_pad(chunks, config.pad_token_id)
    return Rollout(prompt_ids, prompt_mask, responses, response_mask(responses, eos_ids), num_samples)


def generate_segmented(
    model: PreTrainedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    cache,
    config: GenerationConfig,
    eos_ids: torch.Tensor,
    segment: int,
    synced_gpus: bool = False,
) -> torch.Tensor:
    """`model.generate`'s new tokens [rows, R] (pad after each row's end), decoded `segment` tokens at a
    time: after each segment the rows that produced an end-of-sequence token leave the batch, their
    KV cache rows with them (`Cache.batch_select_indices`), and the others continue from the cache.

    A single `generate` call decodes every row until the call's longest row ends; with chat's long
    tails most of those row-steps are on finished rows. Here a finished row costs at most
    `segment - 1` more steps. Every token is still drawn by `generate` from the same `config`
    (softmax(logits / T), neutral warpers) given the row's own prefix, so the distribution is the
    single call's; the random stream is consumed in a different order (fewer rows per draw), so
    samples differ from the single call's for one seed, but stay a function of the seed (greedy:
    the same tokens up to float rounding). `synced_gpus` (FSDP): ranks agree before each segment
    whether any of them still decodes, and one that has finished runs a one-token `generate` per
    segment so that every rank makes the same collective calls.
    """
    rows, limit = ids.size(0), config.max_new_tokens
    out = ids.new_full((rows, limit), config.pad_token_id)
    active = torch.arange(rows, device=ids.device)
    eos_ids = eos_ids.to(ids.device)
    done = 0  # tokens generated so far by every active row (they all started together)
    while True:
        busy = active.numel() > 0 and done < limit
        if synced_gpus:
            flag = torch.tensor(float(busy), device=ids.device)
            dist.all_reduce(flag)
            if flag.item() == 0:
                break
        elif not busy:
            break
        step = copy.deepcopy(config)
        step.max_new_tokens, step.return_dict_in_generate = (min(segment, limit - done) if busy else 1), True
        if not busy:  # keep step with the ranks still decoding; the token is thrown away, and its draw
            one = out.new_zeros(1, 1)  # must not move this rank's random stream (its next call's samples)
            with torch.random.fork_rng(devices=[one.device] if one.device.type == "cuda" else []):
                model.generate(
                    input_ids=one, attention_mask=torch.ones_like(one), generation_config=step, synced_gpus=True
                )
            continue
        result = model.generate(
            input_ids=ids,
            attention_mask=mask,
            cache=cache,
            generation_config=step,
            synced_gpus=synced_gpus,
        )
        new = result.sequences[:, ids.size(1) :]
        out[active, done : done + new.size(1)] = new
        done += new.size(1)
        keep = (~torch.isin(new, eos_ids).any(1)).nonzero().squeeze(1)
        active, ids = active[keep], result.sequences[keep]
        mask = torch.cat([mask, mask.new_ones(mask.size(0), new.size(1))], dim=1)[keep]
        cache = result.cache
        if keep.numel() and cache is not None:
            cache.batch_select_indices(keep)
    return out[:, : max(done, 1)]  # as wide as the longest row's decode steps, like `generate`'s output


def decode_row_steps(lengths: torch.Tensor, call_rows: int, segment: int | None) -> int:
    """The row-decode-steps (rows x forwards, one new token per row and forward) `sample` computes for
    responses of these `lengths` [rows] (tokens up to and including the end-of-sequence one, or the
    cap), `call_rows` rows per `generate` call: each call decodes every row until its longest ends
    (`segment` None), or, in segments, the rows still going until the longest of them ends or the
    segment does (tests/test_rollout.py checks it against the forwards `sample` runs)."""
    steps = 0
    for call in lengths.split(call_rows):
        if not segment:
            steps += call.numel() * int(call.max())
            continue
        for start in range(0, int(call.max()), segment):
            going = call[call > start]
            steps += going.numel() * min(segment, int(going.max()) - start)
    return steps


def _right_pad(chunks: list[torch.Tensor], pad_id: int) -> torch.Tensor:
    width = max(c.size(1) for c in chunks)
    return torch.cat([torch.nn.functional.pad(c, (0, width - c.size(1)), value=pad_id) for c in chunks])


@torch.no_grad()
def generate_texts(
    model: PreTrainedModel,
    tokenizer,
    conversations: list[list[dict]],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    eos_ids: list[int] | None = None,
    config: GenerationConfig | None = None,
    synced_gpus: bool = False,
) -> list[str]:
    """Decode a reply to each conversation (greedy unless `config` says otherwise), in batches."""
    eos_ids = eos_ids or [tokenizer.eos_token_id]
    config = config or generation_config(
        max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=tokenizer.pad_token_id, greedy=True
    )
    was_training = model.training
    model.eval()
    texts = []
    for start in range(0, len(conversations), batch_size):
        enc = tokenizer.apply_chat_template(
            conversations[start : start + batch_size],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            padding=True,
            return_tensors="pt",
        ).to(model.device)
        out = model.generate(**enc, generation_config=config, synced_gpus=synced_gpus)
        texts += tokenizer.batch_decode(out[:, enc["input_ids"].size(1) :], skip_special_tokens=True)
    model.train(was_training)
    return texts
