"""KD under DDP: the toy teacher is built once by two ranks racing for it, and the student's
gradients are synchronised, so both ranks end with the same weights (`debug=ranks`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT, fast_overrides

BUILD_RACE = textwrap.dedent("""
    import sys, time
    import torch.distributed as dist
    from omegaconf import OmegaConf
    from gad.models import load_tokenizer
    from gad.kd_teachers import build_teacher

    rank, port, folder = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    if rank == 0:
        time.sleep(3)  # rank 1 reaches the build first (what once published a folder without weights)
    config = OmegaConf.to_container(OmegaConf.load(sys.argv[4]).toy.teacher.build.config)
    recipe = {"_target_": "gad.toy.kd_teacher.ensure_teacher_model", "data": f"{folder}/dump.jsonl", "config": config, "steps": 2, "batch_size": 4, "lr": 1e-3,
              "max_prompt_tokens": 64, "max_response_tokens": 12, "seed": 0}
    tok = load_tokenizer(sys.argv[5])
    build_teacher({"kind": "local", "path": f"{folder}/teacher", "build": recipe}).setup(tok)
    dist.barrier()
    dist.destroy_process_group()
    print("loaded", flush=True)
""")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_building_the_toy_teacher_at_once_end_with_one_complete_folder(tmp_path):
    lines = (ROOT / "data" / "toy" / "train.jsonl").read_text().splitlines()[:40]
    (tmp_path / "dump.jsonl").write_text("\n".join(lines) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                BUILD_RACE,
                str(rank),
                port,
                str(tmp_path),
                str(ROOT / "conf" / "method" / "kd.yaml"),
                str(ROOT / "data" / "toy" / "tokenizer"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "loaded" in out, err[-2000:]
    assert sum("[kd] fitting" in out for out, _ in outs) == 1  # built once; the other rank waited and loaded it
    names = {p.name for p in (tmp_path / "teacher").iterdir()}
    assert {"build.json", "config.json", "model.safetensors", "tokenizer.json"} <= names
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".partial-")] == []


def test_an_unfinished_teacher_folder_is_rebuilt_not_trusted(tmp_path):
    from omegaconf import OmegaConf

    from gad.models import load_tokenizer
    from gad.toy.kd_teacher import ensure_teacher_model

    lines = (ROOT / "data" / "toy" / "train.jsonl").read_text().splitlines()[:40]
    (tmp_path / "dump.jsonl").write_text("\n".join(lines) + "\n")
    tok = load_tokenizer(str(ROOT / "data" / "toy" / "tokenizer"))
    config = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "method" / "kd.yaml").toy.teacher.build.config)
    recipe = {
        "data": str(tmp_path / "dump.jsonl"),
        "config": config,
        "steps": 2,
        "batch_size": 4,
        "lr": 1e-3,
        "max_prompt_tokens": 64,
        "max_response_tokens": 12,
        "seed": 0,
    }
    folder = tmp_path / "teacher"
    tok.save_pretrained(folder)  # what the DDP race used to leave: the tokenizer, no config, no weights
    ensure_teacher_model(str(folder), tok, recipe)
    assert all((folder / name).is_file() for name in ("build.json", "config.json", "model.safetensors"))


# ------------------------------------------------------------ KD's gradients under DDP

KD = fast_overrides("method.") + [
    "method=kd",
    "method.steps=3",
    "method.alpha_warmup_steps=0",
    "method.micro_batch_size=2",
    "method.teacher.build.steps=2",
    "callbacks.rollout_samples=null",
    "trainer=ddp_cpu",
    "debug=ranks",
]


VARIANTS = {"off_policy": ["method.on_policy=false", "method.alpha=0.5"], "alpha0": ["method.alpha=0"]}


@pytest.fixture(scope="module")
def kd_runs(tmp_path_factory):
    """Both runs at once (each is two processes). A fresh cache each: both ranks race to build the
    toy teacher (2 fitting steps), as on a fresh checkout."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    logs = {name: tmp_path_factory.mktemp(name) for name in VARIANTS}
    procs = {
        name: subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "src" / "train.py"),
                f"paths.log_dir={logs[name]}",
                f"paths.cache_dir={logs[name]}/cache",
                *KD,
                *variant,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, variant in VARIANTS.items()
    }
    results = {name: (proc, *proc.communicate(timeout=600)) for name, proc in procs.items()}
    return logs, results


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kd_ranks_end_with_identical_weights(kd_runs, variant):
    logs, results = kd_runs
    proc, out, err = results[variant]
    assert proc.returncode == 0, err[-3000:]
    (run,) = (logs[variant] / "train" / "runs").iterdir()
    ranks = [json.loads((run / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["parameters"] == ranks[1]["parameters"]  # exact: every rank steps on the same all-reduced gradient
    assert sum(text.count("[kd] fitting") for text in (out, err)) == 1  # the teacher was fitted by one rank only


def test_a_wrapped_networks_step_without_an_all_reduce_is_refused():
    """The guard behind the test above: any future call site that runs a training forward on the
    bare network (not `self.network(name)`) fails at its optimizer step instead of drifting."""
    import contextlib
    from types import SimpleNamespace

    from gad.methods.base import DistillModule

    wrapper = SimpleNamespace(no_sync=contextlib.nullcontext)
    module = SimpleNamespace(wrapped={"generator": wrapper}, synced=set(), networks={})
    with pytest.raises(RuntimeError, match="never all-reduced across ranks"):
        DistillModule.step_optimizer(module, "generator")
    with DistillModule.network(module, "generator", sync=False) as net:  # accumulating only: still not synced
        assert net is wrapper
    with pytest.raises(RuntimeError, match="never all-reduced"):
        DistillModule.step_optimizer(module, "generator")
    with DistillModule.network(module, "generator"):
        pass
    assert module.synced == {"generator"}
