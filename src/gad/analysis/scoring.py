"""Score (prompt, response) pairs with a trained run's discriminator, exactly as training did.

    scorer = load_discriminator("outputs/train/runs/<timestamp>")        # last.ckpt
    scorer.score([("Add: 2 3", "5"), ("Add: 2 3", "6")])                # -> [float, float]

Encoding goes through the run's own `DistillDataModule` (built from its config, without
reading its data): the prompt through the chat template with the generation prompt, the
response tokenised without special tokens and ended with the end-of-turn token (what both
teacher responses and student samples end with in training), prompts cut to
`max_prompt_tokens` from the left and responses to `max_response_tokens`; then
`DistillDataModule.collate` pads to `[left-padded prompt | right-padded response]` and D
reads its score at the last response token, as `GADModule.discriminator_step` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import torch
from hydra.utils import instantiate

from gad.errors import GADError
from gad.runs import built_from, checkpoints, load_module, run_config

Messages = list[dict[str, str]]
Prompt = Union[str, Messages]


def as_messages(prompt: Prompt) -> Messages:
    """A prompt as chat messages: a string is one user turn; a message list must end with a user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise GADError(
            f"prompt must be a string or a non-empty list of {{role, content}} messages, got {type(prompt).__name__}"
        )
    for turn in prompt:
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("role"), str)
            or not isinstance(turn.get("content"), str)
        ):
            raise GADError(f"prompt has a message that is not {{role: str, content: str}}: {turn!r}")
    if prompt[-1]["role"] != "user":
        raise GADError(f"prompt must end with a user turn (ends with '{prompt[-1]['role']}')")
    return [{"role": t["role"], "content": t["content"]} for t in prompt]


def resolve_checkpoint(run_dir: str | Path, ckpt: str | Path | int | None) -> Path:
    """None -> last.ckpt; an int k -> checkpoints/step_<k>.ckpt; a path -> itself."""
    run_dir = Path(run_dir)
    if ckpt is None:
        path = run_dir / "checkpoints" / "last.ckpt"
    elif isinstance(ckpt, int):
        found = [p for p in checkpoints(run_dir) if int(p.stem.removeprefix("step_")) == ckpt]
        if not found:
            have = ", ".join(p.stem for p in checkpoints(run_dir)) or "none"
            raise GADError(f"{run_dir}: no checkpoint of step {ckpt} (have: {have})")
        path = found[0]
    else:
        path = Path(ckpt)
    if not path.is_file():
        raise GADError(f"{path}: no such checkpoint")
    return path


class DiscriminatorScorer:
    """A run's discriminator with the run's tokenizer and data encoding; `score` pairs in batches."""

    def __init__(
        self,
        discriminator: torch.nn.Module,
        encoder: Any,
        step: int | None = None,
        checkpoint: Path | None = None,
        device: str | torch.device = "cpu",
    ):
        if not hasattr(encoder, "_encode") or not hasattr(encoder, "collate"):
            raise GADError(f"{type(encoder).__name__} is not a DistillDataModule (needs _encode and collate)")
        self.discriminator = discriminator.to(device).eval()
        self.encoder = encoder
        self.tokenizer = encoder.tokenizer
        self.step, self.checkpoint, self.device = step, checkpoint, torch.device(device)

    # -------------------------------------------------------------- encoding

    def encode(self, pairs: Sequence[tuple[Prompt, str]], rendered: bool = False) -> list[dict]:
        """Token rows {id, prompt_ids, response_ids}, as the run's data module encodes a teacher pair.

        `rendered=True` takes each prompt as text already through the chat template (the
        `prompt` field of rollouts.jsonl) and tokenises it as is, special tokens included.
        A response that already ends with the end-of-turn text gets no second one.
        """
        eot = self.encoder.end_of_turn
        records = []
        for i, (prompt, response) in enumerate(pairs):
            if not isinstance(response, str):
                raise GADError(f"pair {i}: the response must be a string, got {type(response).__name__}")
            response = response[: -len(eot)] if response.endswith(eot) else response
            messages = [{"role": "user", "content": ""}] if rendered else as_messages(prompt)
            records.append({"id": str(i), "messages": messages, "response": response})
        rows = self.encoder._encode(records, {})
        if len(rows) != len(records):  # cannot happen with truncation="left" (see load_discriminator)
            raise GADError("some prompts were dropped as too long (data.truncation=drop)")
        if rendered:
            for row, (prompt, _) in zip(rows, pairs):
                if not isinstance(prompt, str):
                    raise GADError("rendered=True needs every prompt as a string")
                ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
                row["prompt_ids"] = ids[-self.encoder.max_prompt_tokens :]
        return rows

    def batch(self, pairs: Sequence[tuple[Prompt, str]], rendered: bool = False) -> dict[str, Any]:
        """The collated batch (prompt/response ids and masks) that `score` feeds D."""
        return self.encoder.collate(self.encode(pairs, rendered=rendered))

    # -------------------------------------------------------------- scoring

    @torch.no_grad()
    def score_batch(self, batch: dict[str, Any]) -> torch.Tensor:
        """D scores [B] of one collated batch, read at each row's last response token."""
        parts = (batch[k].to(self.device) for k in ("prompt_ids", "prompt_mask", "response_ids", "response_mask"))
        return self.discriminator(*parts).float().cpu()

    def score(self, pairs: Sequence[tuple[Prompt, str]], batch_size: int = 16, rendered: bool = False) -> list[float]:
        """D's score of each (prompt, response) pair, in input order, `batch_size` pairs per forward.

        A prompt is a string (one user turn) or a list of {role, content} messages ending
        with a user turn; see `encode` for `rendered`.
        """
        if batch_size < 1:
            raise GADError(f"batch_size must be at least 1, got {batch_size}")
        pairs = list(pairs)
        out: list[float] = []
        for start in range(0, len(pairs), batch_size):
            out.extend(self.score_batch(self.batch(pairs[start : start + batch_size], rendered=rendered)).tolist())
        return out

    __call__ = score

    def __repr__(self) -> str:
        where = self.checkpoint.name if self.checkpoint else "?"
        return f"DiscriminatorScorer(checkpoint={where}, step={self.step}, device={self.device})"


def load_discriminator(
    run_dir: str | Path, ckpt: str | Path | int | None = None, device: str | torch.device = "cpu"
) -> DiscriminatorScorer:
    """The discriminator of a GAD run at a checkpoint (None: last.ckpt; int k: step_<k>.ckpt).

    The scorer keeps only D, the tokenizer and the run's encoding settings; the rest of the
    module is dropped. Prompts longer than `data.max_prompt_tokens` are cut from the left even
    if the run dropped them (`data.truncation=drop`), so every pair gets a score.
    """
    cfg = run_config(run_dir)
    path = resolve_checkpoint(run_dir, ckpt)
    module = load_module(run_dir, path, device=str(device))
    discriminator = getattr(module, "discriminator", None)
    if discriminator is None:
        raise GADError(f"{run_dir}: the run's method ({type(module).__name__}) has no discriminator")
    with built_from(Path(run_dir) / "config.yaml"):
        encoder = instantiate(cfg.data, tokenizer=module.tokenizer, truncation="left")
    return DiscriminatorScorer(discriminator, encoder, step=int(module.completed_steps), checkpoint=path, device=device)
