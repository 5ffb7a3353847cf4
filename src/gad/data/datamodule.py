"""Replays a teacher dump: (chat prompt, teacher response) pairs, tokenised for the student.

Several teachers: a dump may hold several responses per prompt (one record per (id, teacher)). The data
module keeps one row per response, a prompt's rows side by side, and samples PROMPTS: each step's batch
holds `batch_size` prompts with every one of their responses (`data.batch_size` counts prompts, so a
two-teacher batch has twice the rows). A batch (`collate`) is row-aligned as before, one row per
(prompt, response): prompt_ids/prompt_mask [R, P], response_ids/response_mask [R, T], ids [R], plus
  teachers         list[str] [R]  the teacher of each row (`teacher` field; "teacher" when the dump has none)
  response_prompt  long [R]       which of the batch's prompts (0..B-1) each row answers
  prompt_rows      long [B]       the first row of each prompt: prompt_ids[prompt_rows] are the B distinct prompts
With one teacher R == B, response_prompt == prompt_rows == arange(B), and the batches are the ones earlier
versions made. How methods pair several teachers' responses: `gad.teachers` (docs/several_teachers.md).

Training is counted in steps, not epochs: the train loader is an endless stream of
batches indexed by step, so a run resumed at step k continues with exactly the batch an
uninterrupted run would have seen. Where the stream starts is handed in with `start_at`
(by `gad.fit.ResumeData`, from the method's step counter restored from the checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import datasets
import lightning as L
import torch
from rich.table import Table
from torch.utils.data import DataLoader, Sampler
from transformers import PreTrainedTokenizerBase

from gad.atomic import discard, publish_dir, staging_dir
from gad.chat import with_system_prompt
from gad.console import console
from gad.data.records import Columns, dump_files, is_hub_id, read_records
from gad.errors import GADError, writing

# 2: rows carry their teacher, a prompt's rows side by side; 3: and their record's meta (JSON), for reward terms
CACHE_FORMAT = 3
UNNAMED_TEACHER = "teacher"  # the teacher label of a record without a `teacher` field


def load_cache(cached: Path) -> tuple[datasets.DatasetDict, dict[str, Any]] | None:
    """A published cache folder's splits and stats, or None (then rebuilt) when it is missing or
    incomplete: `stats.json` is written last, so a folder without it was never finished (or was
    left by a version that wrote in place), and one that does not load is not trusted either."""
    if not (cached / "stats.json").is_file():
        discard(cached)
        return None
    try:
        stats = json.loads((cached / "stats.json").read_text())
        return datasets.load_from_disk(str(cached)), stats
    except Exception:  # datasets and json raise many types for damaged files; all mean "rebuild"
        discard(cached)
        return None


def save_cache(splits: datasets.DatasetDict, stats: dict[str, Any], cached: Path) -> None:
    """Write the cache under a temporary name beside `cached`, then rename it into place. A full disk is one
    line naming the cache, and the unfinished copy is removed at once (it can be as large as the data)."""
    with writing(cached, setting="paths.cache_dir"):
        staging = staging_dir(cached)
        try:
            splits.save_to_disk(str(staging))
            (staging / "stats.json").write_text(json.dumps(stats))  # last: marks the folder complete
        except Exception:  # a failed write; a killed or interrupted build's leftover goes with the next build
            shutil.rmtree(staging, ignore_errors=True)  # a `.partial-` name no reader takes: no need to move it aside
            raise
        publish_dir(staging, cached)  # False: another run published the same cache first


class StepBatchSampler(Sampler[list[int]]):
    """Endless batches of row indices; batch g on rank r of W is slice (g*W + r) of the stream.

    The stream is successive seeded permutations of the rows (one per pass over the data),
    so ranks never share a row within a step and any step's batch is a pure function of
    (seed, step, rank).
    """

    def __init__(
        self,
        num_rows: int,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
        groups: list[list[int]] | None = None,
    ):
        """`groups`: the dataset rows of each of the `num_rows` prompts (several teachers' responses); a batch
        then holds `batch_size` prompts and yields all their rows, a prompt's rows together."""
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self.groups = groups
        self.start_step, self.rank, self.world_size = start_step, rank, world_size
        self._perms: dict[int, list[int]] = {}

    def _row(self, position: int) -> int:
        epoch, i = divmod(position, self.num_rows)
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms = {epoch: torch.randperm(self.num_rows, generator=g).tolist()}
        return self._perms[epoch][i]

    def batch_at(self, step: int) -> list[int]:
        first = (step * self.world_size + self.rank) * self.batch_size
        rows = [self._row(p) for p in range(first, first + self.batch_size)]
        return rows if self.groups is None else [r for g in rows for r in self.groups[g]]

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            yield self.batch_at(step)
            step += 1


def side_by_side(rows: list[dict]) -> list[dict]:
    """`rows` with each prompt's rows together, prompts in order of first appearance (a no-op for one
    response per prompt)."""
    by_id: dict[str, list[dict]] = {}
    for row in rows:
        by_id.setdefault(row["id"], []).append(row)
    return [row for group in by_id.values() for row in group]


def prompt_groups(ids: list[str]) -> list[list[int]]:
    """The row indices of each prompt in rows kept side by side (`side_by_side`)."""
    groups: list[list[int]] = []
    for i, rid in enumerate(ids):
        if i and rid == ids[i - 1]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def validation_split(records: list[dict], val_size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out `val_size` prompts chosen by a seeded hash of their id (stable under row order), with all
    their records (several teachers' responses)."""
    if val_size <= 0:
        return records, []
    ids = list(dict.fromkeys(r["id"] for r in records))
    if val_size >= len(ids):
        raise GADError(f"data.val_size={val_size} leaves no training rows ({len(ids)} prompts)")
    rank = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    held = set(rank[:val_size])
    return [r for r in records if r["id"] not in held], [r for r in records if r["id"] in held]


class DistillDataModule(L.LightningDataModule):
    start_step = 0  # the method step whose batch the train loader yields first (start_at)

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        path: str,
        split: str = "train",
        columns: dict[str, str | None] | None = None,
        skip_invalid: bool = False,
        max_prompt_tokens: int = 2048,
        max_response_tokens: int = 1536,
        truncation: str = "left",
        end_of_turn: str | None = None,
        val_size: int = 64,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        seed: int = 0,
        cache_dir: str | None = None,
        num_workers: int = 0,
        system_prompt: str = "none",
    ):
        super().__init__()
        self.tokenizer = tokenizer
        self.path, self.split = str(path), split
        self.columns = Columns(**(columns or {}))
        self.skip_invalid = skip_invalid
        self.max_prompt_tokens, self.max_response_tokens = max_prompt_tokens, max_response_tokens
        self.truncation = truncation
        self.end_of_turn = end_of_turn or tokenizer.eos_token
        ids = tokenizer.convert_tokens_to_ids([self.end_of_turn])
        if ids[0] is None or ids[0] == tokenizer.unk_token_id:
            raise GADError(f"data.end_of_turn: '{self.end_of_turn}' is not a single token of the student's tokenizer")
        self.end_of_turn_id = ids[0]
        self.val_size, self.batch_size = val_size, batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.seed, self.cache_dir, self.num_workers = seed, cache_dir, num_workers
        self.system_prompt = system_prompt  # gad.chat: the same system turn the teacher was sent
        self.train_set: datasets.Dataset | None = None
        self.val_set: datasets.Dataset | None = None
        self.train_groups: list[list[int]] | None = None  # rows of each prompt, when some prompt has several
        self.stats: dict[str, Any] = {}

    # ------------------------------------------------------------ loading

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        cached = self._cache_path()
        loaded = load_cache(cached) if cached is not None else None
        if loaded is not None:
            splits, self.stats = loaded
            self.stats["cache"] = "hit"
        else:
            splits, self.stats = self._build()
            if cached is not None:
                save_cache(splits, self.stats, cached)
            self.stats["cache"] = "miss" if cached is not None else "off"
        self.train_set, self.val_set = splits["train"], splits["validation"]
        groups = prompt_groups(self.train_set["id"])
        self.train_groups = groups if len(groups) < len(self.train_set) else None
        if int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0:
            self._print_report()

    def _build(self) -> tuple[datasets.DatasetDict, dict[str, Any]]:
        records, report = read_records(self.path, self.columns, split=self.split, skip_invalid=self.skip_invalid)
        stats: dict[str, Any] = {"rows": report.rows, "invalid_skipped": sum(report.skipped.values())}
        stats.update({f"invalid: {k}": v for k, v in report.skipped.items()})
        stats.update({f"files skipped: {k}": v for k, v in report.files_skipped.items()})
        encoded = side_by_side(self._encode(records, stats))
        if not encoded:
            raise GADError(f"{self.path}: every prompt is longer than data.max_prompt_tokens={self.max_prompt_tokens}")
        train, val = validation_split(encoded, self.val_size, self.seed)
        stats.update(train=len(train), validation=len(val))
        teachers = sorted({r["teacher"] for r in encoded})
        if len({r["id"] for r in encoded}) < len(encoded):  # several responses per prompt: say how many of each
            stats["train prompts"] = len({r["id"] for r in train})
            stats["teachers"] = ", ".join(f"{t} {sum(r['teacher'] == t for r in encoded)}" for t in teachers)
        return datasets.DatasetDict(
            train=datasets.Dataset.from_list(train), validation=datasets.Dataset.from_list(val)
        ), stats

    def _encode(self, records: list[dict], stats: dict[str, Any]) -> list[dict]:
        conversations = [with_system_prompt(r["messages"], self.system_prompt, self.tokenizer) for r in records]
        prompts = self.tokenizer.apply_chat_template(
            conversations, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        responses = self.tokenizer([r["response"] for r in records], add_special_tokens=False)["input_ids"]
        out, dropped, cut_prompts, cut_responses = [], 0, 0, 0
        for record, prompt, response in zip(records, prompts, responses):
            if len(prompt) > self.max_prompt_tokens:
                if self.truncation == "drop":
                    dropped += 1
                    continue
                prompt, cut_prompts = prompt[-self.max_prompt_tokens :], cut_prompts + 1
            # The same terminal token the student's samples end with; otherwise D learns to
            # tell teacher from student by the eos alone.
            response = response + [self.end_of_turn_id]
            if len(response) > self.max_response_tokens:
                response, cut_responses = response[: self.max_response_tokens], cut_responses + 1
            teacher = record.get("teacher") or UNNAMED_TEACHER
            meta = json.dumps(record.get("meta") or {}, sort_keys=True)  # text: metas differ in shape across rows
            row = {"id": record["id"], "prompt_ids": prompt, "response_ids": response, "teacher": teacher, "meta": meta}
            out.append(row)
        stats.update(prompts_dropped_too_long=dropped, prompts_truncated=cut_prompts, responses_truncated=cut_responses)
        return out

    def _cache_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        if is_hub_id(self.path):
            source = [self.path, self.split]
        else:
            source = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in dump_files(self.path)]
        tok = self.tokenizer
        key = json.dumps(
            [
                CACHE_FORMAT,
                source,
                tok.name_or_path,
                len(tok),
                tok.chat_template,
                self.end_of_turn,
                asdict(self.columns),
                self.skip_invalid,
                self.max_prompt_tokens,
                self.max_response_tokens,
                self.truncation,
                self.val_size,
                self.seed,
                self.system_prompt,
            ],
            default=str,
        )
        return Path(self.cache_dir) / hashlib.sha256(key.encode()).hexdigest()[:16]

    def _print_report(self) -> None:
        table = Table(title="data", show_header=False)
        table.add_row("source", str(self.path))  # a cell, not the title: a long path is never cut mid-word
        for key, value in self.stats.items():
            table.add_row(key, str(value))
        console().print(table)

    # ------------------------------------------------------------ loaders

    def start_at(self, step: int) -> None:
        """Make the train loader start with the batch of method step `step` + 1 (`step` steps already
        done: 0 for a new run). Call it before the loader is built; it holds until changed."""
        self.start_step = step

    def collate(self, rows: list[dict]) -> dict[str, Any]:
        pad = self.tokenizer.pad_token_id
        p_len = max(len(r["prompt_ids"]) for r in rows)
        r_len = max(len(r["response_ids"]) for r in rows)
        prompt_ids = torch.full((len(rows), p_len), pad, dtype=torch.long)
        prompt_mask = torch.zeros((len(rows), p_len), dtype=torch.long)
        response_ids = torch.full((len(rows), r_len), pad, dtype=torch.long)
        response_mask = torch.zeros((len(rows), r_len), dtype=torch.long)
        for i, row in enumerate(rows):
            p, r = row["prompt_ids"], row["response_ids"]
            prompt_ids[i, p_len - len(p) :], prompt_mask[i, p_len - len(p) :] = torch.tensor(p), 1
            response_ids[i, : len(r)], response_mask[i, : len(r)] = torch.tensor(r), 1
        starts = [i for i, row in enumerate(rows) if i == 0 or row["id"] != rows[i - 1]["id"]]
        which = [0] * len(rows)  # the prompt (0..B-1) each row answers
        for b, (start, stop) in enumerate(zip(starts, [*starts[1:], len(rows)])):
            which[start:stop] = [b] * (stop - start)
        return {
            "ids": [r["id"] for r in rows],
            "metas": [json.loads(r["meta"]) if r.get("meta") else {} for r in rows],  # for reward terms (gad.rewards)
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "response_ids": response_ids,
            "response_mask": response_mask,
            "teachers": [r.get("teacher") or UNNAMED_TEACHER for r in rows],
            "response_prompt": torch.tensor(which, dtype=torch.long),
            "prompt_rows": torch.tensor(starts, dtype=torch.long),
        }

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "setup() first"
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        prompts = len(self.train_groups) if self.train_groups is not None else len(self.train_set)
        sampler = StepBatchSampler(
            prompts, self.batch_size, self.seed, self.start_step, rank, world, groups=self.train_groups
        )
        return DataLoader(self.train_set, batch_sampler=sampler, collate_fn=self.collate, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "setup() first"
        return DataLoader(
            self.val_set, batch_size=self.val_batch_size, collate_fn=self.collate, num_workers=self.num_workers
        )
