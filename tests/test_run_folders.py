"""Run folders: runs started at the same moment get their own, the processes of one run share one,
and a run refuses a folder another live run is writing (gad/run_folder.py)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest
from conftest import FAST, ROOT, assert_one_line_error

from gad.errors import GADError
from gad.run_folder import OWNER_FILE, claim, release

QUICK = [*FAST, "method.warmup_steps=2", "method.adversarial_steps=1"]


def start_train(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "GAD_RUN_ID"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, str(ROOT / "src" / "train.py"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_runs_started_at_the_same_moment_get_their_own_folders(tmp_path):
    procs = [
        start_train(f"paths.log_dir={tmp_path}", f"paths.cache_dir={tmp_path}/cache", f"seed={seed}", *QUICK)
        for seed in (1, 2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    runs = sorted((tmp_path / "train" / "runs").iterdir())
    assert len(runs) == 2
    # <time>_<run id>: unique even within one second (the time alone was all the name had)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_[0-9a-f]{8}", r.name) for r in runs), [
        r.name for r in runs
    ]
    assert {r.name.split("_")[-1] for r in runs}.__len__() == 2
    from omegaconf import OmegaConf

    assert sorted(OmegaConf.load(r / "config.yaml").seed for r in runs) == [1, 2]  # each folder: one run's own config
    assert not any((r / OWNER_FILE).exists() for r in runs)  # released at the end


def test_a_second_run_forced_into_a_live_runs_folder_is_refused(tmp_path):
    folder = tmp_path / "shared"
    first = start_train(f"hydra.run.dir={folder}", f"paths.cache_dir={tmp_path}/cache", *QUICK)
    deadline = time.monotonic() + 300
    while not (folder / OWNER_FILE).exists():
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()[-3000:]
        time.sleep(0.2)
    second = start_train(f"hydra.run.dir={folder}", f"paths.cache_dir={tmp_path}/cache", "seed=7", *QUICK)
    out, err = second.communicate(timeout=300)
    proc = subprocess.CompletedProcess(second.args, second.returncode, out, err)
    assert_one_line_error(proc, str(folder), "in use by another run", f"pid {first.pid}")
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    assert "seed=7" not in (folder / ".hydra" / "overrides.yaml").read_text()  # refused before Hydra wrote anything
    assert not (folder / OWNER_FILE).exists()


def run_id_of(env: dict[str, str]) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GAD_RUN_ID", "TORCHELASTIC", "SLURM", "MASTER_"))}
    code = "from gad.run_folder import run_id; print(run_id())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, "PYTHONPATH": str(ROOT / "src"), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_the_processes_of_one_launch_share_a_run_id_and_separate_launches_do_not():
    assert run_id_of({}) != run_id_of({})  # two plain launches
    torchrun = {"TORCHELASTIC_RUN_ID": "4f1c2d3e-aaaa", "MASTER_PORT": "29500"}
    assert run_id_of({**torchrun, "RANK": "0"}) == run_id_of({**torchrun, "RANK": "1"}) == "4f1c2d3e-aaa"
    static = {"TORCHELASTIC_RUN_ID": "none"}  # torchrun without --rdzv-id: the master port is what ranks share
    assert run_id_of({**static, "MASTER_PORT": "29500"}) != run_id_of({**static, "MASTER_PORT": "29501"})
    srun = {"SLURM_JOB_ID": "812", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "8"}
    assert run_id_of({**srun, "SLURM_PROCID": "0"}) == run_id_of({**srun, "SLURM_PROCID": "7"}) == "812.0"
    batch = {"SLURM_JOB_ID": "812"}  # two runs started from one batch script: separate runs
    assert run_id_of(batch) != run_id_of(batch)
    assert run_id_of({"GAD_RUN_ID": "nodes-a"}) == "nodes-a"  # set by hand, or inherited by DDP children


def test_ownership_is_shared_within_a_run_refused_across_runs_and_taken_from_dead_owners(tmp_path):
    folder = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = {"run_id": "other", "pid": sleeper.pid, "host": socket.gethostname(), "started": "then"}
        folder.mkdir()
        (folder / OWNER_FILE).write_text(json.dumps(owner))
        with pytest.raises(GADError, match=f"in use by another run \\(pid {sleeper.pid}"):
            claim(folder, "mine")
        assert claim(folder, "other") is False  # a process of the owner's own run: shares the folder
    finally:
        sleeper.kill()
        sleeper.wait()
    assert claim(folder, "mine") is True  # the owner died (same host): taken over
    assert json.loads((folder / OWNER_FILE).read_text())["pid"] == os.getpid()
    release(folder)
    assert not (folder / OWNER_FILE).exists()
    (folder / OWNER_FILE).write_text(json.dumps({**owner, "host": "another-node", "pid": 1}))
    with pytest.raises(GADError, match="on another-node"):  # cannot tell if it is alive: refused
        claim(folder, "mine")
