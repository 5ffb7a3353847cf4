"""What a KD teacher is: something that scores token sequences with its next-token distributions.

A teacher sees the student's own token ids (teacher and student must share a tokenizer) and
returns, for the last R positions of each row, either its full log-softmax over the
vocabulary or the log-probs of a few listed tokens (top-k, plus the scored token itself).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from gad.errors import GADError


@dataclass
class TeacherDists:
    """The teacher's next-token distributions for the response positions of a batch.

    Full: `logprobs` [B, R, V] (temperature-1 log-softmax), `ids` and `valid` None.
    Listed: `logprobs` [B, R, K] temperature-1 log-probs of tokens `ids` [B, R, K]; `valid`
    [B, R, K] marks the real entries (rows are padded to K; a position past a row's end has none).
    Position j of the response scores response token j given everything before it.
    """

    logprobs: torch.Tensor
    ids: torch.Tensor | None = None
    valid: torch.Tensor | None = None

    @property
    def full(self) -> bool:
        return self.ids is None

    def to(self, device: torch.device) -> TeacherDists:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TeacherDists(move(self.logprobs), move(self.ids), move(self.valid))


class Teacher(ABC):
    """Built from config (cheap, no I/O); `setup` loads or connects and checks the tokenizer."""

    top_k: int | None = None

    @abstractmethod
    def setup(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Load the model or reach the server, and refuse a tokenizer other than the student's."""

    @abstractmethod
    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_width: int) -> TeacherDists:
        """Distributions for the last `response_width` positions of rows `[pad.. prompt | response ..pad]`."""

    def describe(self) -> str:
        return type(self).__name__


def tokenizer_mismatch(student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase) -> str | None:
    """Why two tokenizers are not the same token <-> id map (None when they are).

    KD compares the two models' distributions id by id, so what must agree is the vocabulary
    with its added/special tokens: the same strings at the same ids.
    """
    s_vocab, t_vocab = student.get_vocab(), teacher.get_vocab()
    if len(student) != len(teacher):
        return f"the teacher's tokenizer has {len(teacher)} tokens, the student's {len(student)}"
    if s_vocab != t_vocab:
        by_id = {i: tok for tok, i in t_vocab.items()}
        for tok, i in sorted(s_vocab.items(), key=lambda kv: kv[1]):
            if by_id.get(i) != tok:
                return f"token id {i} is {tok!r} for the student but {by_id.get(i)!r} for the teacher"
        return "the two vocabularies differ"
    return None


def refuse_tokenizer(where: str, why: str) -> GADError:
    return GADError(
        f"{where}: the teacher does not share the student's tokenizer ({why}); KD compares the two "
        "models' distributions token by token, so they must use the same tokenizer"
    )
