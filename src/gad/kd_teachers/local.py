"""A teacher that is a Hugging Face causal LM loaded in this process (frozen, never in a checkpoint)."""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import get_object
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from gad.errors import GADError
from gad.kd_teachers.base import Teacher, TeacherDists, refuse_tokenizer, tokenizer_mismatch
from gad.losses import position_ids
from gad.models import DTYPES
from gad.remote_code import refuse_remote_code


def listed_topk(logp: torch.Tensor, scored: torch.Tensor, k: int) -> TeacherDists:
    """What a vLLM server returns for prompt log-probs, from full log-probs [B, R, V]:
    the k most likely tokens, plus the scored token `scored` [B, R] when it is not among them."""
    values, ids = logp.topk(min(k, logp.size(-1)), dim=-1)
    own = torch.gather(logp, -1, scored.unsqueeze(-1))
    listed = (ids == scored.unsqueeze(-1)).any(-1, keepdim=True)
    ids = torch.cat([ids, scored.unsqueeze(-1)], dim=-1)
    values = torch.cat([values, own], dim=-1)
    valid = torch.cat([torch.ones_like(listed).expand(-1, -1, ids.size(-1) - 1), ~listed], dim=-1)
    return TeacherDists(values, ids, valid)


class LocalTeacher(Teacher):
    """`path`: a model folder or hub id; `tokenizer`: its tokenizer (default: `path`).

    `top_k` null scores with the full distribution; a number k keeps only the k most likely
    tokens (+ the scored one), exactly what an API teacher returns, e.g. to compare the two.
    `build`: a recipe to fit a teacher when `path` does not exist yet: its `_target_` names the builder,
    called as `builder(path, tokenizer, recipe)` with the recipe's other keys (the toy world's:
    `gad.toy.kd_teacher.ensure_teacher_model`, set by the `toy:` sizes of conf/method/kd.yaml).
    """

    def __init__(
        self,
        path: str,
        tokenizer: str | None = None,
        top_k: int | None = None,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        build: dict[str, Any] | None = None,
    ):
        self.path, self.tokenizer_path = str(path), str(tokenizer or path)
        self.top_k, self.dtype, self.attn_implementation = top_k, dtype, attn_implementation
        self.build = dict(build) if build else None
        self.model = None

    def describe(self) -> str:
        return f"local teacher {self.path}" + (f" (top-{self.top_k})" if self.top_k else " (full distributions)")

    def setup(self, tokenizer: PreTrainedTokenizerBase) -> None:
        if self.build is not None:
            recipe = dict(self.build)
            target = recipe.pop("_target_", None)
            if not target:
                raise GADError("method.teacher.build._target_: name the builder (module.function) of this recipe")
            get_object(str(target))(self.path, tokenizer, recipe)
        key = "method.teacher.tokenizer" if self.tokenizer_path != self.path else "method.teacher.path"
        refuse_remote_code(self.tokenizer_path, key)  # and trust_remote_code=False: never asked, never run
        refuse_remote_code(self.path, "method.teacher.path")
        try:
            own = AutoTokenizer.from_pretrained(self.tokenizer_path, trust_remote_code=False)
        except (OSError, ValueError) as err:
            raise GADError(
                f"{key}: cannot load the teacher's tokenizer from '{self.tokenizer_path}' "
                f"({type(err).__name__}); set method.teacher.tokenizer to its folder"
            ) from None
        why = tokenizer_mismatch(tokenizer, own)
        if why is not None:
            raise refuse_tokenizer("method.teacher.path", f"{self.tokenizer_path}: {why}")
        try:
            model = AutoModelForCausalLM.from_pretrained(
                self.path,
                dtype=DTYPES[self.dtype],
                attn_implementation=self.attn_implementation,
                trust_remote_code=False,
            )
        except (OSError, ValueError) as err:
            raise GADError(
                f"method.teacher.path: cannot load the teacher model '{self.path}' ({type(err).__name__})"
            ) from None
        rows = model.get_output_embeddings().weight.size(0)
        if rows < len(tokenizer):
            raise GADError(
                f"method.teacher.path: the teacher's output layer has {rows} rows but the tokenizer {len(tokenizer)} tokens"
            )
        self.model = model.eval().requires_grad_(False)

    @torch.no_grad()
    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_width: int) -> TeacherDists:
        assert self.model is not None, "setup() first"
        if self.model.device != input_ids.device:
            self.model.to(input_ids.device)
        logits = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            logits_to_keep=response_width + 1,
            use_cache=False,
        ).logits[:, :-1]
        logp = torch.log_softmax(logits.float(), dim=-1)
        if self.top_k is None:
            return TeacherDists(logp)
        return listed_topk(logp, input_ids[:, -response_width:], self.top_k)
