"""SODA's pieces that stand alone: the preference loss against a hand computation, and the one-time student
snapshot (exactly once per prompt, resumable, the same after an interruption as without one)."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import PAD, ROOT, TINY, fast_overrides, run_entry

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


# ---------------------------------------------------------------- method=soda through the real entry points

SMALL = [  # conf/debug/fast.yaml less its GAD keys, on a 40-prompt dump (the snapshot draws every train prompt)
    *fast_overrides("method."),
    "method.steps=4",
    "callbacks.step_checkpoint.every_n_steps=2",
]


def soda_train(log_dir, dump, *overrides, cache=None):
    cache = cache or log_dir / "cache"
    args = [f"paths.log_dir={log_dir}", f"paths.cache_dir={cache}", f"data.path={dump}", "method=soda", *SMALL]
    proc = run_entry("train.py", *args, *overrides)
    assert proc.returncode == 0, f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return sorted((log_dir / "train" / "runs").iterdir())[-1]


def weights(run):
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    path = tmp_path_factory.mktemp("dump") / "train.jsonl"
    path.write_text("".join((ROOT / "data/toy/train.jsonl").read_text().splitlines(keepends=True)[:40]))
    return path


@pytest.fixture(scope="module")
def soda_run(tmp_path_factory, dump):
    return soda_train(tmp_path_factory.mktemp("soda"), dump)


def test_soda_trains_on_the_toy_world_with_its_snapshot_and_reference(soda_run):
    rows = [r for r in csv.DictReader(open(soda_run / "metrics.csv")) if r.get("train/step")]
    assert [float(r["train/step"]) for r in rows] == [1, 2, 3, 4]
    # step 1: the generator is the reference, so every DPO reward is 0 and the loss is log 2
    assert abs(float(rows[0]["train/soda_loss"]) - math.log(2)) < 1e-5 and float(rows[0]["train/margin"]) == 0
    assert float(rows[-1]["train/margin"]) > 0  # DPO moved the student towards the teacher, away from its snapshot
    snapshot = [json.loads(line) for line in (soda_run / "soda_snapshot.jsonl").read_text().splitlines()]
    assert len(snapshot) == 32 == len({r["id"] for r in snapshot})  # 40 prompts less the 8 held out, once each
    assert float(rows[0]["train/snapshot_tokens"]) == sum(r["length"] for r in snapshot)
    state = weights(soda_run)
    assert not any(k.startswith("reference.") for k in state)  # saved once, beside the checkpoints
    reference = torch.load(soda_run / "checkpoints" / "reference.pt", weights_only=True)
    assert reference.keys() == {
        f"reference.{k.removeprefix('generator.')}" for k in state if k.startswith("generator.")
    }
    assert (soda_run / "student" / "config.json").is_file()  # exported


def test_soda_resumed_into_a_new_folder_redraws_a_lost_snapshot_and_ends_with_the_same_weights(
    soda_run, dump, tmp_path
):
    (cached,) = (soda_run.parents[2] / "cache" / "soda_snapshot").glob("*.jsonl")
    original = cached.read_text()
    cached.rename(cached.with_suffix(".moved"))  # the resumed run can neither read nor find it: it redraws
    try:
        resumed = soda_train(tmp_path, dump, f"ckpt_path={soda_run / 'checkpoints' / 'step_000002.ckpt'}")
    finally:
        cached.with_suffix(".moved").rename(cached)
    redrawn = tmp_path / "cache" / "soda_snapshot" / cached.name
    # Drawn by the restored reference (the student at step 0) with the same seed: the same responses
    assert [json.loads(x)["response_ids"] for x in redrawn.read_text().splitlines()] == [
        json.loads(x)["response_ids"] for x in original.splitlines()
    ]
    a, b = weights(soda_run), weights(resumed)
    # Bit-exact on purpose: both runs ran on this machine, the same ops in the same order from the same state.
    assert a.keys() == b.keys() and not [k for k in a if not torch.equal(a[k], b[k])]


def test_soda_run_reloads_evaluates_and_reads_in_the_notebook(soda_run, dump, tmp_path, monkeypatch):
    from gad.analysis import load_discriminator, load_metrics
    from gad.runs import load_module

    proc = run_entry(
        "eval.py",
        f"paths.log_dir={tmp_path}",
        "progress=false",
        f"models={{soda: '{soda_run}'}}",
        f"prompt_sets={{id: '{ROOT / 'data/toy/test_id.jsonl'}'}}",
        "limit=2",
        "plot=false",
        env={"GAD_TRUSTED_PATHS": str(dump.parent)},  # the run trained on a dump outside the project
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    monkeypatch.setenv("GAD_TRUSTED_PATHS", str(dump.parent))
    module = load_module(soda_run)
    assert type(module).__name__ == "SODAModule" and module.completed_steps == 4 and module.reference_ready
    assert module.snapshot_path and module.snapshot_path.endswith(".jsonl")
    assert not torch.equal(module.reference.lm_head.weight, module.generator.lm_head.weight)  # the step-0 student
    metrics = load_metrics(soda_run)
    assert len(metrics) == 4 and metrics["soda_loss"].notna().all()
    with pytest.raises(GADError, match="discriminator"):
        load_discriminator(soda_run)


def test_soda_misconfigured_is_one_line():
    """In this process (src/train.py turns the same GADError into one `error:` line: tests/test_config.py)."""
    from hydra import compose, initialize_config_dir

    from gad.config.validate import validate

    for override, message in (
        ("method.beta=0", "method.beta=0 is invalid"),
        ("method.snapshot.top_p=2", "method.snapshot.top_p=2 is invalid"),
        ("+method.betta=3", "method.betta: unknown key"),
    ):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(
                "train", overrides=[f"paths.root_dir={ROOT}", "paths.output_dir=/tmp/x", "method=soda", override]
            )
        with pytest.raises(GADError, match=message.replace(".", r"\.")):
            validate(cfg)


# ---------------------------------------------------------------- method=soda on a real pretrained student

SMOL_SODA = ["method=soda", "method.steps=2", "callbacks.step_checkpoint.every_n_steps=1"]


@pytest.fixture(scope="module")
def chat_dump(tmp_path_factory):
    from test_real_student import CHAT

    path = tmp_path_factory.mktemp("chat") / "chat.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": f"c{i}", "messages": [{"role": "user", "content": q}], "response": a}) + "\n"
            for i, (q, a) in enumerate(CHAT)
        )
    )
    return path


@pytest.fixture(scope="module")
def smol_soda(smollm2, chat_dump, tmp_path_factory):
    """A real pretrained student (conftest `smollm2`, offline): 4 chat prompts (and 2 held out), 8-token snapshot,
    2 steps, a step checkpoint after each (step_000001.ckpt: the resume test's start)."""
    from test_real_student import tiny, train

    run = train(tmp_path_factory.mktemp("smol_soda"), *tiny(smollm2, chat_dump), *SMOL_SODA)
    yield run
    shutil.rmtree(run / "checkpoints", ignore_errors=True)  # GBs, needed by no later module: free the disk now


def test_soda_on_smollm2_at_tiny_shapes(smol_soda):
    from test_real_student import SMOLLM_VOCAB
    from transformers import AutoTokenizer

    rows = [r for r in csv.DictReader(open(smol_soda / "metrics.csv")) if r.get("train/step")]
    assert len(rows) == 2 and abs(float(rows[0]["train/soda_loss"]) - math.log(2)) < 1e-4
    snapshot = [json.loads(line) for line in (smol_soda / "soda_snapshot.jsonl").read_text().splitlines()]
    assert len(snapshot) == 4 and all(0 < r["length"] <= 8 for r in snapshot)
    assert (smol_soda / "student" / "config.json").is_file()  # exported, with the student's own tokenizer
    tok = AutoTokenizer.from_pretrained(smol_soda / "student")
    assert len(tok) == SMOLLM_VOCAB and tok.eos_token == "<|im_end|>"


def test_soda_on_smollm2_resumed_into_a_new_folder_ends_with_the_same_weights(smol_soda, smollm2, chat_dump, tmp_path):
    from safetensors.torch import load_file
    from test_real_student import steps, tiny, train

    step1 = smol_soda / "checkpoints" / "step_000001.ckpt"
    # No checkpoints of its own (each ~1.6 GB to write): the exported student holds the weights to compare.
    resumed = train(
        tmp_path, *tiny(smollm2, chat_dump), *SMOL_SODA, f"ckpt_path={step1}", "callbacks.step_checkpoint=null"
    )
    assert [float(r["train/step"]) for r in steps(resumed)] == [2]
    # another cache_dir: the resumed run reads the snapshot file its checkpoint names, and draws nothing
    assert not (tmp_path / "cache" / "soda_snapshot").exists()
    assert (resumed / "soda_snapshot.jsonl").read_text() == (smol_soda / "soda_snapshot.jsonl").read_text()
    a, b = (load_file(run / "student" / "model.safetensors") for run in (smol_soda, resumed))
    base = load_file(smollm2 / "model.safetensors")
    assert a.keys() == b.keys() and [k for k in a if k in base and not torch.equal(a[k], base[k])]  # it trained
    # Bit-exact on purpose: the resumed and the uninterrupted run ran on this machine, the same ops in the
    # same order from the same state; any difference is a resume bug, not rounding.
    assert not [k for k in a if not torch.equal(a[k], b[k])]


def test_soda_on_smollm2_evaluates_and_reads_in_the_notebook(smol_soda, chat_dump, tmp_path, monkeypatch):
    from gad.analysis import load_metrics
    from gad.runs import load_module

    trusted = {"GAD_TRUSTED_PATHS": str(chat_dump.parent)}  # the run trained on a dump outside the project
    proc = run_entry(
        "eval.py",
        f"paths.log_dir={tmp_path}",
        "progress=false",
        f"models={{soda: '{smol_soda}'}}",
        f"prompt_sets={{chat: '{chat_dump}'}}",
        "limit=2",
        "generation.max_new_tokens=8",
        "plot=false",
        env=trusted,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = Path(re.search(r"^outputs: (.+)$", proc.stdout, re.M).group(1))
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert [(r["model"], r["set"], r["n"]) for r in rows] == [("soda", "chat", 2)]
    assert 0 < rows[0]["tokens_mean"] <= 8 and math.isfinite(rows[0]["perplexity"])
    monkeypatch.setenv(*trusted.popitem())
    module = load_module(smol_soda)
    assert type(module).__name__ == "SODAModule" and module.completed_steps == 2 and module.reference_ready
    metrics = load_metrics(smol_soda)
    assert len(metrics) == 2 and metrics["soda_loss"].notna().all()
    # The notebook, executed headless: the run's own curves, and one line for each section about a discriminator.
    from test_notebook import execute

    outputs, text = execute(smol_soda, monkeypatch)
    assert "SODAModule, 2 steps, no discriminator" in text["setup"]
    assert any("image/png" in o.get("data", {}) for o in outputs["curves"])
    for cell in ("hist", "hack-corr", "examples", "score-pairs"):
        assert "SODAModule trains no discriminator" in text[cell], cell
