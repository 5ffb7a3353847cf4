"""SODA's pieces that stand alone: the preference loss against a hand computation, and the one-time student
snapshot (exactly once per prompt, resumable, the same after an interruption as without one)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import PAD, TINY

from gad.errors import GADError
from gad.models import load_student
from gad.soda_losses import sequence_logprobs, soda_loss
from gad.soda_snapshot import SnapshotSpec, read_snapshot, snapshot_file, snapshot_prompts, take_snapshot

EOS = list(range(0, 256, 8))  # an eighth of the vocabulary ends a response: a random model stops early


def test_soda_loss_matches_a_hand_computation():
    # pair 1: chosen ratio -3 - (-3.5) = 0.5, rejected ratio -4 - (-3) = -1; beta 0.5 -> margin 0.25 + 0.5 = 0.75
    # pair 2: chosen ratio 0, rejected ratio -2 - (-2.5) = 0.5 -> margin -0.25
    # loss = mean(log(1 + e^-0.75), log(1 + e^0.25)) = mean(0.386871, 0.825939) = 0.606405
    policy_chosen = torch.tensor([-3.0, -5.0], requires_grad=True)
    terms = soda_loss(
        policy_chosen,
        torch.tensor([-4.0, -2.0]),
        torch.tensor([-3.5, -5.0]),
        torch.tensor([-3.0, -2.5]),
        beta=0.5,
    )
    assert abs(terms.loss.item() - 0.606405) < 1e-5
    assert terms.chosen_reward.tolist() == [0.25, 0.0] and terms.rejected_reward.tolist() == [-0.5, 0.25]
    assert terms.margin.tolist() == [0.75, -0.25] and terms.accuracy.item() == 0.5
    terms.loss.backward()
    # d/d chosen_1 of -log sigmoid(beta * m1) / 2 = -beta * (1 - sigmoid(0.75)) / 2
    assert abs(policy_chosen.grad[0].item() - (-0.5 * (1 - 1 / (1 + math.exp(-0.75))) / 2)) < 1e-6
    with_nll = soda_loss(*(torch.zeros(2) for _ in range(4)), chosen_nll=torch.tensor(2.0), nll_weight=0.25)
    assert abs(with_nll.loss.item() - (math.log(2) + 0.5)) < 1e-6  # zero margin: log 2, plus 0.25 x NLL 2
    with pytest.raises(ValueError, match="share one"):
        soda_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="beta must be > 0"):
        soda_loss(*(torch.zeros(2) for _ in range(4)), beta=0)
    logp = torch.tensor([[-1.0, -2.0, -4.0], [-0.5, -0.5, -9.0]])
    assert sequence_logprobs(logp, torch.tensor([[1, 1, 1], [1, 1, 0]])).tolist() == [-7.0, -1.0]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_student(config={**TINY, "initializer_range": 0.5}).eval()


def prompts(n=10):
    g = torch.Generator().manual_seed(3)
    rows = [
        {"id": f"p{i}", "prompt_ids": torch.randint(0, 256, (int(2 + i % 4),), generator=g).tolist()} for i in range(n)
    ]
    return snapshot_prompts([*rows, {**rows[0], "teacher": "b"}])  # a second teacher's row: still one prompt


def test_snapshot_is_taken_once_per_prompt_and_an_interrupted_one_resumes_to_the_same(model, tmp_path):
    spec = SnapshotSpec(model_id="tiny@0", temperature=0.9, max_new_tokens=12, seed=5, batch_size=4)
    todo = prompts()
    assert len(todo) == 10
    kw = dict(eos_ids=EOS, pad_id=PAD, decode=lambda ids: " ".join(map(str, ids)))
    whole = take_snapshot(model, todo, tmp_path / "a" / "s.jsonl", spec, **kw)
    assert list(whole) == [p["id"] for p in todo] and any(len(r) > 1 for r in whole.values())

    class Stop(Exception):
        pass

    def stop_after_one(k, written):
        raise Stop

    path = snapshot_file(tmp_path / "run", spec, todo)
    with pytest.raises(Stop):
        take_snapshot(model, todo, path, spec, on_batch=stop_after_one, **kw)
    first = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert first == ["p0", "p1", "p2", "p3"]
    with path.open("a") as fh:  # a torn line, as a kill mid-write leaves it
        fh.write('{"id": "p4", "response_')
    calls = []
    resumed = take_snapshot(model, todo, path, spec, on_batch=lambda k, n: calls.append((k, n)), **kw)
    assert calls == [(1, 4), (2, 2)] and resumed == whole  # only the missing batches, the same responses
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == sorted(p["id"] for p in todo)  # each prompt exactly once
    assert all(r["response"] == " ".join(map(str, r["response_ids"])) for r in lines)
    assert take_snapshot(model, todo, path, spec, on_batch=lambda k, n: calls.append(k), **kw) == whole
    assert len(calls) == 2  # nothing left to generate
    other = SnapshotSpec(model_id="tiny@0", temperature=0.9, max_new_tokens=12, seed=6, batch_size=4)
    assert snapshot_file(tmp_path / "run", other, todo) != path  # other settings: another file
    with pytest.raises(GADError, match="no snapshot for 1 prompts"):
        read_snapshot(path, [*whole, "nope"])
