"""Student outputs with a durable cache: greedy generations and teacher-forced NLL per prompt.

Cache: `<cache_dir>/students/<model fingerprint>.jsonl`, a `gad.api.Journal` (append-only, one
line per result, written after each batch, so an interrupted evaluation resumes). Keys:
  generation  (model fingerprint, chat template, sha of the prompt messages, generation params)
  nll         (model fingerprint, chat template, sha of the prompt messages, sha of the teacher
               response, perplexity params)
The prompt is keyed by content, not by its set or id: the same prompt in two sets is generated
once. The model's weights are loaded only when something is missing from the cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gad.api.journal import Journal
from gad.chat import with_system_prompt
from gad.evaluation.config import GenerationParams, PerplexityParams
from gad.evaluation.keys import prompt_sha, sha
from gad.evaluation.model_specs import ModelSpec, load_model_for


@dataclass
class CacheStats:
    generated: int = 0
    generation_hits: int = 0
    nll_computed: int = 0
    nll_hits: int = 0
    model_loaded: bool = False

    def add(self, other: CacheStats) -> None:
        self.generated += other.generated
        self.generation_hits += other.generation_hits
        self.nll_computed += other.nll_computed
        self.nll_hits += other.nll_hits
        self.model_loaded = self.model_loaded or other.model_loaded


@dataclass
class StudentOutputs:
    """Per prompt (in the order given): the response and the teacher response's NLL."""

    responses: list[str]
    nll: list[float | None]
    nll_tokens: list[int | None]
    stats: CacheStats = field(default_factory=CacheStats)


class StudentRunner:
    """Generations and NLLs of one model over any number of prompt lists, through the cache."""

    def __init__(
        self,
        spec: ModelSpec,
        tokenizer,
        cache_dir: str | Path,
        *,
        gen: GenerationParams,
        ppl: PerplexityParams,
        device: str = "auto",
        dtype: str = "auto",
        attn_implementation: str = "sdpa",
        console=None,
    ):
        self.spec, self.tokenizer = spec, tokenizer
        self.gen, self.ppl = gen, ppl
        self.load_kwargs = dict(device=device, dtype=dtype, attn_implementation=attn_implementation)
        self.console = console
        template = sha(str(getattr(tokenizer, "chat_template", "")))[:16]
        self.base = {"model": spec.fingerprint, "template": template, "system_prompt": gen.system_prompt}
        self.journal = Journal(Path(cache_dir) / "students" / f"{spec.fingerprint}.jsonl", fsync_interval_s=1.0)
        self.journal.open()
        self.values: dict[str, dict[str, Any]] = {r["id"]: r for r in self.journal.records()}
        self.model = None
        self.eos_ids: list[int] = []

    def close(self) -> None:
        self.journal.close()
        self.model = None

    def __enter__(self) -> StudentRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------- helpers
    def _model(self):
        if self.model is None:
            if self.console is not None:
                self.console.print(f"[dim]loading {self.spec.name} ({self.spec.describe()})[/dim]")
            self.model, self.eos_ids = load_model_for(self.spec, self.tokenizer, **self.load_kwargs)
        return self.model

    def gen_key(self, messages: list[dict]) -> str:
        return "gen:" + sha({**self.base, "prompt": prompt_sha(messages), "params": self.gen.key()})[:40]

    def nll_key(self, messages: list[dict], response: str) -> str:
        return (
            "nll:"
            + sha(
                {**self.base, "prompt": prompt_sha(messages), "response": sha(response)[:32], "params": self.ppl.key()}
            )[:40]
        )

    def _store(self, record: dict[str, Any]) -> None:
        self.journal.append(record)
        self.values[record["id"]] = record

    # ----------------------------------------------------------------------------------- work
    def run(self, records: list[dict[str, Any]], description: str = "") -> StudentOutputs:
        stats = CacheStats()
        keys = [self.gen_key(r["messages"]) for r in records]
        missing: dict[str, list[dict]] = {}
        for key, record in zip(keys, records):
            if key in self.values:
                stats.generation_hits += 1
            elif key not in missing:
                missing[key] = record["messages"]
            else:
                stats.generation_hits += 1  # a duplicate prompt within the set
        if missing:
            stats.model_loaded = True
            stats.generated += self._generate(missing, description)
        responses = [self.values[k]["response"] for k in keys]

        nll: list[float | None] = [None] * len(records)
        nll_tokens: list[int | None] = [None] * len(records)
        if self.ppl.enabled:
            todo: dict[str, tuple[list[dict], str]] = {}
            nkeys: list[str | None] = []
            for record in records:
                teacher = record.get("response")
                if teacher is None:
                    nkeys.append(None)
                    continue
                key = self.nll_key(record["messages"], teacher)
                nkeys.append(key)
                if key in self.values or key in todo:
                    stats.nll_hits += 1
                else:
                    todo[key] = (record["messages"], teacher)
            if todo:
                stats.model_loaded = True
                stats.nll_computed += self._score(todo)
            for i, key in enumerate(nkeys):
                if key is not None:
                    nll[i], nll_tokens[i] = self.values[key]["nll"], self.values[key]["tokens"]
        self.journal.sync()
        return StudentOutputs(responses, nll, nll_tokens, stats)

    def _generate(self, missing: dict[str, list[dict]], description: str) -> int:
        from gad.rollout import generate_texts, generation_config

        model = self._model()
        tok = self.tokenizer
        config = generation_config(
            max_new_tokens=self.gen.max_new_tokens,
            eos_ids=self.eos_ids,
            pad_id=tok.pad_token_id,
            temperature=self.gen.temperature,
            top_p=self.gen.top_p,
            greedy=self.gen.greedy,
        )
        items = [(key, with_system_prompt(m, self.gen.system_prompt, tok)) for key, m in missing.items()]
        lengths = tok.apply_chat_template(
            [m for _, m in items], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        order = sorted(range(len(items)), key=lambda i: -len(lengths[i]))  # similar lengths batch together
        if not self.gen.greedy:
            torch.manual_seed(self.gen.seed)
        done = 0
        progress = _progress(self.console, f"generate {description}", len(items))
        for start in range(0, len(order), self.gen.batch_size):
            chunk = [items[i] for i in order[start : start + self.gen.batch_size]]
            texts = generate_texts(
                model,
                tok,
                [m for _, m in chunk],
                max_new_tokens=self.gen.max_new_tokens,
                batch_size=len(chunk),
                eos_ids=self.eos_ids,
                config=config,
            )
            for (key, _), text in zip(chunk, texts):
                self._store({"id": key, "response": text})
            done += len(chunk)
            progress(done)
        progress(None)
        return done

    @torch.no_grad()
    def _score(self, todo: dict[str, tuple[list[dict], str]]) -> int:
        from gad.losses import position_ids, token_logprobs

        model = self._model()
        tok = self.tokenizer
        items = [(key, (with_system_prompt(m, self.gen.system_prompt, tok), t)) for key, (m, t) in todo.items()]
        prompts = tok.apply_chat_template(
            [m for _, (m, _) in items], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        responses = tok([t for _, (_, t) in items], add_special_tokens=False)["input_ids"]
        end = tok.eos_token_id  # the end-of-turn token training appends (data.end_of_turn default)
        rows = []
        for (key, _), p, r in zip(items, prompts, responses):
            p = list(p)[-self.ppl.max_prompt_tokens :]
            r = (list(r) + [end])[: self.ppl.max_response_tokens]
            rows.append((key, p, r))
        order = sorted(range(len(rows)), key=lambda i: -(len(rows[i][1]) + len(rows[i][2])))
        device = next(model.parameters()).device
        for start in range(0, len(order), self.ppl.batch_size):
            chunk = [rows[i] for i in order[start : start + self.ppl.batch_size]]
            width = max(len(p) + len(r) for _, p, r in chunk)
            r_max = max(len(r) for _, _, r in chunk)
            ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, (_, p, r) in enumerate(chunk):  # left padding: every row ends at the last column
                seq = p + r
                ids[i, width - len(seq) :] = torch.tensor(seq)
                mask[i, width - len(seq) :] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids(mask),
                use_cache=False,
                logits_to_keep=r_max + 1,
            ).logits[:, :-1]
            targets = ids[:, -r_max:]
            logps = token_logprobs(logits, targets)
            for i, (key, _, r) in enumerate(chunk):
                nll = -float(logps[i, r_max - len(r) :].sum())
                if not math.isfinite(nll):
                    nll = float("inf")
                self._store({"id": key, "nll": nll, "tokens": len(r)})
        return len(rows)


def _progress(console, description: str, total: int):
    """A minimal progress line on stderr: returns update(done) / update(None) to finish."""
    if console is None or total == 0:
        return lambda done: None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    task = bar.add_task(description, total=total)
    bar.start()

    def update(done):
        if done is None:
            bar.stop()
        else:
            bar.update(task, completed=done)

    return update
