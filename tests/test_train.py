"""The real entry point on the toy world: every parameter trains, outputs are complete, resume is exact."""

from __future__ import annotations

import csv
import json

import lightning as L
import pytest
import torch
from conftest import fast_overrides, train
from transformers import AutoModelForCausalLM, AutoTokenizer

from gad.fit import build_module
from gad.runs import run_config

WATCHED = [
    "train/d_loss",
    "train/d_acc",
    "train/g_loss",
    "train/sft_loss",
    "train/reward_mean",
    "train/reward_std",
    "train/teacher_score",
    "train/student_score",
    "train/response_len",
    "train/kl",
    "train/entropy",
    "val/nll",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    # checkpoints at 2 (warm-up), 3 (warm-up ends) and 4 (adversarial), for the resume tests
    log_dir = tmp_path_factory.mktemp("logs")
    return train(log_dir, "callbacks.step_checkpoint.every_n_steps=1", "callbacks.rollout_samples.every_n_steps=2")


def state(path):
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_every_parameter_of_both_networks_changed(run):
    cfg = run_config(run)
    L.seed_everything(cfg.seed, verbose=False)
    initial = build_module(cfg).state_dict()  # same seed => the run's initial weights
    final = state(run / "checkpoints" / "last.ckpt")
    trained = [k for k in initial if k.startswith(("generator.", "discriminator."))]
    assert any(k.startswith("discriminator.head") for k in trained)
    unchanged = [k for k in trained if torch.equal(initial[k], final[k])]
    assert not unchanged, unchanged


def test_reference_is_the_student_at_the_end_of_warmup(run):
    warmup_end = state(run / "checkpoints" / "step_000003.ckpt")
    last = state(run / "checkpoints" / "last.ckpt")
    # saved once, beside the checkpoints, not in each of them
    reference = torch.load(run / "checkpoints" / "reference.pt", map_location="cpu", weights_only=True)
    assert reference and not any(key.startswith("reference.") for key in last)
    for key, value in reference.items():
        assert torch.equal(value, warmup_end["generator." + key.removeprefix("reference.")]), key
    assert not torch.equal(last["generator.lm_head.weight"], warmup_end["generator.lm_head.weight"])


def test_metrics_csv_has_the_watched_columns_for_every_step(run):
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert set(WATCHED) <= set(rows[0])
    steps = [r for r in rows if r.get("train/step")]
    assert [float(r["train/step"]) for r in steps] == [1, 2, 3, 4, 5, 6]
    assert all(r["train/d_acc"] != "" for r in steps)
    adversarial = [r for r in steps if float(r["train/phase"]) == 1]
    assert len(adversarial) == 3 and all(r["train/reward_mean"] != "" and r["train/kl"] != "" for r in adversarial)
    assert steps[0]["train/sft_loss"] == ""  # the first step trains D only


def test_rollout_samples_carry_scores(run):
    lines = [json.loads(x) for x in open(run / "rollouts.jsonl")]
    assert {r["step"] for r in lines} == {2, 4, 6}
    sample = lines[0]["samples"][0]
    assert isinstance(sample["score"], float) and sample["length"] >= 1 and "teacher_score" in lines[0]


def test_exported_student_loads_and_generates(run):
    tok = AutoTokenizer.from_pretrained(run / "student")
    model = AutoModelForCausalLM.from_pretrained(run / "student")
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Add: 2 3"}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    last = state(run / "checkpoints" / "last.ckpt")
    assert torch.equal(model.state_dict()["model.embed_tokens.weight"], last["generator.model.embed_tokens.weight"])


@pytest.mark.parametrize("resume_at", [2, 4], ids=["from-warmup", "from-adversarial"])
def test_resume_ends_with_the_same_parameters(run, tmp_path, resume_at):
    ckpt = run / "checkpoints" / f"step_{resume_at:06d}.ckpt"
    resumed = train(
        tmp_path,
        f"ckpt_path={ckpt}",
        "callbacks.step_checkpoint.every_n_steps=1",
        "callbacks.rollout_samples.every_n_steps=2",
    )
    a, b = state(run / "checkpoints" / "last.ckpt"), state(resumed / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    # Bit-exact on purpose: both runs ran on this machine, the same ops in the same order from the same state.
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different
    steps = [float(r["train/step"]) for r in csv.DictReader(open(resumed / "metrics.csv")) if r.get("train/step")]
    assert steps == list(range(resume_at + 1, 7))  # continued, not restarted


def test_seqkd_runs_on_the_toy_world(tmp_path):
    common = fast_overrides("method.")  # SeqKD's config has none of GAD's method keys
    run = train(tmp_path, "method=seqkd", "method.steps=3", *common, fast=False)
    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get("train/step")]
    assert len(rows) == 3 and all(float(r["train/sft_loss"]) > 0 for r in rows)
    assert (run / "student" / "config.json").is_file()


def _same(a, b, prefix):
    return all(torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))


def test_off_policy_ablation_freezes_g_then_d(tmp_path):
    # 2 warm-up steps, then D alone on the frozen student for 2, then G alone against the frozen D for 2
    run = train(
        tmp_path,
        "method.off_policy=true",
        "method.off_policy_d_steps=2",
        "method.warmup_steps=2",
        "method.adversarial_steps=2",
        "callbacks.step_checkpoint.every_n_steps=1",
    )
    ckpt = {k: state(run / "checkpoints" / f"step_{k:06d}.ckpt") for k in (2, 4, 6)}
    assert _same(ckpt[2], ckpt[4], "generator.") and not _same(ckpt[2], ckpt[4], "discriminator.")
    assert _same(ckpt[4], ckpt[6], "discriminator.") and not _same(ckpt[4], ckpt[6], "generator.")
    phases = [float(r["train/phase"]) for r in csv.DictReader(open(run / "metrics.csv")) if r.get("train/step")]
    assert phases == [0, 0, 0.5, 0.5, 1, 1]


def test_warmup_ablations_leave_their_network_idle(tmp_path):
    run = train(
        tmp_path,
        "method.generator_warmup=false",
        "method.discriminator_warmup=false",
        "callbacks.step_checkpoint.every_n_steps=3",
    )
    cfg = run_config(run)
    L.seed_everything(cfg.seed, verbose=False)
    initial = build_module(cfg).state_dict()
    warmup_end = state(run / "checkpoints" / "step_000003.ckpt")
    assert _same(initial, warmup_end, "generator.") and _same(initial, warmup_end, "discriminator.")
    assert not _same(warmup_end, state(run / "checkpoints" / "last.ckpt"), "generator.")
