"""SODA's one-time student snapshot: the student's own response to every training prompt, generated once
before training, cached exactly once per prompt, resumable, and reused (arXiv 2604.03873; gad/soda_losses.py).

    spec = SnapshotSpec(model_id="tiny@seed1234", temperature=0.8, top_p=1.0, max_new_tokens=24, seed=1234)
    prompts = snapshot_prompts(dm.train_set)                 # one per prompt id, in order
    path = snapshot_file(run_dir, spec, prompts)             # <run>/soda_snapshot/<fingerprint>.jsonl
    responses = take_snapshot(student, prompts, path, spec, eos_ids=[...], pad_id=...)
    # {prompt id: response token ids (up to and including the first eos)}

Sampling is the rollout's (`gad.rollout.sample`, `generation_config`: temperature / top_p, every other warper
neutral), one response per prompt. The file is a `gad.api.journal.Journal` keyed by id: one record per
prompt, each written the moment its batch is decoded, so a killed snapshot loses at most the batch in
flight and a re-run sends only the prompts still missing. The prompts are cut into fixed batches of
`spec.batch_size` in the order given and batch k is sampled under seed (spec.seed, k): a resumed snapshot
regenerates a partly written batch with the same seed and writes only its missing prompts, so on the same
device it holds what an uninterrupted one would (tests/test_soda.py). `spec.fingerprint` (sampling, seed,
batch size, `model_id`, the prompts' token ids) names the file: a run whose settings changed never reuses
another snapshot, a resumed run finds its own. `model_id` must identify the student's weights at the
snapshot (a hub id + revision, or the from-scratch config + seed): the module cannot tell two initialisations
apart by itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from gad.api.journal import Journal
from gad.errors import GADError

SNAPSHOT_DIR = "soda_snapshot"


@dataclass(frozen=True)
class SnapshotSpec:
    """How the snapshot is drawn; every field is part of its fingerprint."""

    model_id: str  # what the student's weights are (see module doc)
    temperature: float = 0.8  # GAD's rollout temperature (the issue: "the same sampling")
    top_p: float = 1.0
    max_new_tokens: int = 1536
    seed: int = 0
    batch_size: int = 64  # prompts per generate call; batches are fixed, so it is part of the result

    def __post_init__(self) -> None:
        if not self.model_id:
            raise GADError("soda snapshot: model_id must identify the student's weights")
        if not (self.temperature > 0 and 0 < self.top_p <= 1 and self.max_new_tokens >= 1 and self.batch_size >= 1):
            raise GADError(f"soda snapshot: invalid sampling {asdict(self)}")

    def fingerprint(self, prompts: Sequence[dict[str, Any]]) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        for p in prompts:
            digest.update(json.dumps([p["id"], list(p["prompt_ids"])]).encode())
        return digest.hexdigest()[:16]


def snapshot_file(run_dir: str | Path, spec: SnapshotSpec, prompts: Sequence[dict[str, Any]]) -> Path:
    """Where the snapshot of `prompts` under `spec` lives: beside the run, named by its fingerprint."""
    return Path(run_dir) / SNAPSHOT_DIR / f"{spec.fingerprint(prompts)}.jsonl"


def snapshot_prompts(rows: Any) -> list[dict[str, Any]]:
    """The distinct prompts {id, prompt_ids} of a data module's rows (a `datasets.Dataset` or a list of dicts),
    in order: a several-teacher dump has one row per teacher response, and one snapshot per prompt."""
    prompts, seen = [], set()
    for row in rows:
        if row["id"] not in seen:
            seen.add(row["id"])
            prompts.append({"id": row["id"], "prompt_ids": list(row["prompt_ids"])})
    return prompts


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = torch.tensor(r), 1
    return ids, mask


def take_snapshot(
    model: torch.nn.Module,
    prompts: Sequence[dict[str, Any]],
    path: str | Path,
    spec: SnapshotSpec,
    *,
    eos_ids: list[int],
    pad_id: int,
    decode: Callable[[list[int]], str] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, list[int]]:
    """Generate the missing responses of `prompts` into `path` (see module doc); returns {id: response ids} for
    every prompt. `decode` (e.g. tokenizer.decode) also stores each response's text, for reading;
    `on_batch(k, written)` is called after batch k is written (progress)."""
    from gad.rollout import generation_config, sample

    ids = [p["id"] for p in prompts]
    if len(set(ids)) != len(ids):
        raise GADError("soda snapshot: prompt ids must be distinct (one snapshot per prompt: snapshot_prompts)")
    config = generation_config(
        max_new_tokens=spec.max_new_tokens,
        eos_ids=list(eos_ids),
        pad_id=pad_id,
        temperature=spec.temperature,
        top_p=spec.top_p,
    )
    device = next(model.parameters()).device
    with Journal(path, fsync_interval_s=1.0) as journal:
        for k, start in enumerate(range(0, len(prompts), spec.batch_size)):
            batch = prompts[start : start + spec.batch_size]
            if all(p["id"] in journal.keys for p in batch):
                continue
            prompt_ids, prompt_mask = _left_pad([list(p["prompt_ids"]) for p in batch], pad_id)
            devices = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(spec.seed * 1_000_003 + k)
                rollout = sample(
                    model,
                    prompt_ids.to(device),
                    prompt_mask.to(device),
                    num_samples=1,
                    config=config,
                    eos_ids=torch.tensor(list(eos_ids)),
                    micro_batch_size=len(batch),
                )
            written = 0
            for p, row, mask in zip(batch, rollout.response_ids.tolist(), rollout.response_mask.tolist()):
                if p["id"] in journal.keys:
                    continue  # written before an interruption: exactly once
                response = row[: sum(mask)]
                record = {"id": p["id"], "response_ids": response, "length": len(response)}
                record["ended"] = bool(response) and response[-1] in eos_ids
                if decode is not None:
                    record["response"] = decode(response)
                journal.append(record)
                written += 1
            if on_batch is not None:
                on_batch(k, written)
    return read_snapshot(path, ids)


def read_snapshot(path: str | Path, ids: Sequence[str] | None = None) -> dict[str, list[int]]:
    """{id: response ids} of a snapshot file (of `ids` only, all of them required, when given)."""
    found: dict[str, list[int]] = {}
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise GADError(f"{path}: cannot read the snapshot ({err.strerror})") from None
    for line in raw[: raw.rfind(b"\n") + 1].splitlines():  # whole lines only (no lock: ranks may read at once)
        if line.strip():
            record = json.loads(line)
            found.setdefault(record["id"], record["response_ids"])
    if ids is None:
        return found
    missing = [i for i in ids if i not in found]
    if missing:
        raise GADError(f"{path}: no snapshot for {len(missing)} prompts (first: {missing[0]}); run take_snapshot")
    return {i: found[i] for i in ids}
