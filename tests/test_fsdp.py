"""DDP and FSDP2 on 2 CPU processes over gloo (`trainer=ddp_cpu`, `trainer=fsdp_cpu`) through the real
entry point: ranks agree on the weights but sample their own rollouts, FSDP trains the same student as
DDP, its checkpoint is the file DDP writes, and a DDP checkpoint resumes exactly under FSDP."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import train
from safetensors.torch import load_file

from gad.checkpoint_io import consolidate, restore_reference

CHECKPOINT_AT_4 = "callbacks.step_checkpoint.every_n_steps=4"  # FAST runs 6 steps: 3 warm-up, 3 adversarial


def student(run) -> dict[str, torch.Tensor]:
    return load_file(run / "student" / "model.safetensors")


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def moment_shapes(optimizer_state: dict) -> list[tuple[int, ...]]:
    return sorted(tuple(state["exp_avg"].shape) for state in optimizer_state["state"].values())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return {
        strategy: train(tmp_path_factory.mktemp(strategy), f"trainer={strategy}", "debug=[fast,ranks]", CHECKPOINT_AT_4)
        for strategy in ("fsdp_cpu", "ddp_cpu")
    }


@pytest.mark.parametrize("strategy", ["ddp_cpu", "fsdp_cpu"])
def test_ranks_end_with_identical_weights_but_sample_different_rollouts(runs, strategy):
    ranks = [json.loads((runs[strategy] / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # Exact on purpose: every rank steps on the same all-reduced gradient, so replicas never differ by a bit
    assert ranks[0]["parameters"] == ranks[1]["parameters"]  # (under FSDP: the gathered weights)
    assert len(ranks[0]["rollouts"]) == len(ranks[1]["rollouts"]) == 6
    assert all(a != b for a, b in zip(ranks[0]["rollouts"], ranks[1]["rollouts"]))  # each rank its own prompts


def test_fsdp_trains_the_same_student_as_ddp(runs):
    fsdp, ddp = student(runs["fsdp_cpu"]), student(runs["ddp_cpu"])
    assert max_difference(fsdp, ddp) < 1e-5  # same maths; only the order of float reductions differs
    config = json.loads((runs["fsdp_cpu"] / "student" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]  # exported as the plain class, not the FSDP wrapper


def test_an_fsdp_checkpoint_consolidates_into_the_file_ddp_writes(runs):
    """Per-rank shards in a folder; consolidated: one file with the full weights and both optimizers' full
    states, laid out as under DDP (so DDP, one device, eval.py and the notebook read it), holding the
    weights the run exported."""
    folder = runs["fsdp_cpu"] / "checkpoints" / "last.ckpt"
    assert folder.is_dir() and len(list(folder.glob("*.distcp"))) == 2  # sharded by default: one file per rank
    fsdp = torch.load(consolidate(folder), weights_only=False)
    path = runs["ddp_cpu"] / "checkpoints" / "last.ckpt"
    ddp = restore_reference(torch.load(path, weights_only=False), path)
    assert fsdp["state_dict"].keys() == ddp["state_dict"].keys()
    exported = student(runs["fsdp_cpu"])
    assert all(torch.equal(fsdp["state_dict"][f"generator.{k}"], v) for k, v in exported.items())
    assert len(fsdp["optimizer_states"]) == len(ddp["optimizer_states"]) == 2
    for mine, theirs in zip(fsdp["optimizer_states"], ddp["optimizer_states"]):
        assert moment_shapes(mine) == moment_shapes(theirs)  # whole tensors, not one rank's shards
    assert fsdp["distill_state"] == ddp["distill_state"]


def test_a_ddp_checkpoint_resumes_exactly_under_fsdp(runs, tmp_path):
    # Lightning alone would re-key the two optimizers' states by position in the whole module and crash.
    written_under = "ddp_cpu"
    checkpoint = runs[written_under] / "checkpoints" / "step_000004.ckpt"
    resumed = train(tmp_path, "trainer=fsdp_cpu", f"ckpt_path={checkpoint}")
    steps = [line.split(",") for line in (resumed / "metrics.csv").read_text().splitlines()]
    column = steps[0].index("train/step")
    assert [float(row[column]) for row in steps[1:] if row[column]] == [5.0, 6.0]  # it went on, not over
    assert max_difference(student(resumed), student(runs[written_under])) < 1e-6


def test_a_consolidated_fsdp_checkpoint_resumes_exactly_under_ddp(runs, tmp_path):
    checkpoint = consolidate(runs["fsdp_cpu"] / "checkpoints" / "step_000004.ckpt", tmp_path / "step_4.ckpt")
    resumed = train(tmp_path, "trainer=ddp_cpu", f"ckpt_path={checkpoint}")
    assert max_difference(student(resumed), student(runs["fsdp_cpu"])) < 1e-5  # as DDP and FSDP runs agree


def test_lora_adapters_train_under_fsdp(tmp_path):
    # peft's generate() bypasses its wrapper's forward, so the wrapped model must be the FSDP root.
    run = train(
        tmp_path, "trainer=fsdp_cpu", "debug=[fast,ranks]", "model.lora.generator=true", "model.lora.discriminator=true"
    )
    ranks = [json.loads((run / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["parameters"] == ranks[1]["parameters"]
    exported = student(run)
    assert not any("lora" in key for key in exported)  # merged into plain weights
