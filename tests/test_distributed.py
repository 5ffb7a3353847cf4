"""Hydra sweeps that launch two-process jobs (the DDP and FSDP runs themselves: tests/test_fsdp.py)."""

from __future__ import annotations

import csv

from conftest import FAST, ROOT, run_entry


def test_multirun_with_ddp_gives_one_folder_per_job_and_a_summary(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_entry(
        "train.py",
        "-m",
        "trainer=ddp_cpu",
        "method.temperature=0.6,1.0",  # x alpha: a 2 x 1 grid (each DDP job costs ~10 s here)
        "method.alpha=0.1",
        "method.warmup_steps=2",
        "method.adversarial_steps=1",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"paths.cache_dir={tmp_path}/cache",
        f"hydra.sweep.dir={sweep}",
        *FAST,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {"0", "1"}
    assert {p.name for p in sweep.iterdir()} == jobs | {"multirun.yaml", "sweep_summary.csv", "sweep_summary.png"}
    for job in jobs:
        assert (sweep / job / "metrics.csv").is_file() and (sweep / job / "student").is_dir()
    rows = list(csv.DictReader(open(sweep / "sweep_summary.csv")))
    assert len(rows) == 2 and all(r["status"] == "done" and float(r["val/nll"]) > 0 for r in rows)
    assert {(r["method.temperature"], r["method.alpha"]) for r in rows} == {("0.6", "0.1"), ("1.0", "0.1")}
    assert not (tmp_path / "logs").exists()  # no rank re-ran the sweep into a folder of its own


def test_a_failed_job_does_not_stop_a_sweep_under_fsdp(tmp_path):
    # The default sweep folder (outputs/train/multiruns/<time>, under the project root) as users get it.
    proc = run_entry(
        "train.py",
        "-m",
        "method.temperature=0,0.8",
        "trainer=fsdp_cpu",
        f"paths.data_dir={ROOT / 'data'}",
        f"paths.cache_dir={tmp_path}/cache",
        *FAST,
        env={"PROJECT_ROOT": str(tmp_path)},
    )
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    assert proc.returncode == 2
    assert "error: method.temperature=0 is invalid" in proc.stderr and "Traceback" not in proc.stderr
    rows = {r["method.temperature"]: r["status"] for r in csv.DictReader(open(sweep / "sweep_summary.csv"))}
    assert rows == {"0": "failed or running", "0.8": "done"}
    assert {p.name for p in (tmp_path / "outputs" / "train").iterdir()} == {"multiruns"}  # no rank re-ran the sweep
    assert {p.name for p in sweep.iterdir()} == {"0", "1", "multirun.yaml", "sweep_summary.csv", "sweep_summary.png"}
    assert (sweep / "1" / "student" / "model.safetensors").is_file()  # the FSDP job's export, in its own folder
