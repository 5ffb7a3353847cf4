"""FSDP2 (`trainer=fsdp_cpu`: 2 processes on gloo) through the real entry point: it trains the same
student as DDP, and a checkpoint written under either strategy resumes exactly under the other."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAST, train
from safetensors.torch import load_file

CHECKPOINT_AT_4 = "callbacks.step_checkpoint.every_n_steps=4"  # FAST runs 6 steps: 3 warm-up, 3 adversarial


def student(run) -> dict[str, torch.Tensor]:
    return load_file(run / "student" / "model.safetensors")


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return {
        strategy: train(tmp_path_factory.mktemp(strategy), f"trainer={strategy}", "debug=ranks", CHECKPOINT_AT_4)
        for strategy in ("fsdp_cpu", "ddp_cpu")
    }


def test_fsdp_trains_the_same_student_as_ddp(runs):
    fsdp, ddp = student(runs["fsdp_cpu"]), student(runs["ddp_cpu"])
    assert max_difference(fsdp, ddp) < 1e-5  # same maths; only the order of float reductions differs
    ranks = [json.loads((runs["fsdp_cpu"] / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["parameters"] == ranks[1]["parameters"]  # the gathered weights agree
    assert all(a != b for a, b in zip(ranks[0]["rollouts"], ranks[1]["rollouts"]))  # each rank its own rollouts
    config = json.loads((runs["fsdp_cpu"] / "student" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]  # exported as the plain class, not the FSDP wrapper


@pytest.mark.parametrize("written_under, resumed_under", [("fsdp_cpu", "ddp_cpu"), ("ddp_cpu", "fsdp_cpu")])
def test_a_checkpoint_resumes_exactly_under_either_strategy(runs, written_under, resumed_under, tmp_path):
    checkpoint = runs[written_under] / "checkpoints" / "step_000004.ckpt"
    resumed = train(tmp_path, f"trainer={resumed_under}", f"ckpt_path={checkpoint}")
    steps = [line.split(",") for line in (resumed / "metrics.csv").read_text().splitlines()]
    column = steps[0].index("train/step")
    assert [float(row[column]) for row in steps[1:] if row[column]] == [5.0, 6.0]  # it went on, not over
    assert max_difference(student(resumed), student(runs[written_under])) < 1e-6


def test_lora_adapters_train_under_fsdp(tmp_path):
    # peft's generate() bypasses its wrapper's forward, so the wrapped model must be the FSDP root.
    run = train(tmp_path, "trainer=fsdp_cpu", "debug=ranks", "model.lora.generator=true", "model.lora.discriminator=true")
    ranks = [json.loads((run / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["parameters"] == ranks[1]["parameters"]
    exported = student(run)
    assert not any("lora" in key for key in exported)  # merged into plain weights
