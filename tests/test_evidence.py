"""The toy evidence: each arm composes to the delta it names, and the report aggregates seeds correctly."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, assert_one_line_error
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from gad.analysis.evidence import (
    adversarial_table,
    cost_table,
    equal_time_steps,
    load_jobs,
    plot_accuracy,
    plot_cost,
    results_table,
)
from gad.config.validate import validate

ARMS = sorted(p.stem for p in (ROOT / "conf" / "arm").glob("*.yaml"))


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"paths.root_dir={ROOT}", "paths.output_dir=/tmp/gad-test-out", *overrides])


def test_each_arm_changes_exactly_what_it_names():
    base = OmegaConf.to_container(composed("experiment=toy_evidence", "arm=gad").method, resolve=True)
    changed = {}
    for arm in ARMS:
        cfg = composed("experiment=toy_evidence", f"arm={arm}")
        validate(cfg)
        method = OmegaConf.to_container(cfg.method, resolve=True)
        changed[arm] = {k: v for k, v in method.items() if base.get(k) != v}
        assert cfg.callbacks.toy_accuracy.limit == 200  # every prompt of each split
    assert changed["gad"] == {}
    assert changed["seqkd"]["_target_"] == "gad.methods.SeqKDModule" and changed["seqkd"]["steps"] == 160
    assert changed["off_policy"] == {"off_policy": True, "off_policy_d_steps": base["adversarial_steps"]}
    assert changed["no_g_warmup"] == {"generator_warmup": False}
    assert changed["no_d_warmup"] == {"discriminator_warmup": False}
    assert changed["bce"] == {"d_loss": "bce"}


def fake_job(sweep, job: int, arm: str, seed: int, accuracy: float, rewards: list[float]) -> None:
    """A finished job folder as a sweep leaves it: overrides, summary.json, metrics.csv."""
    folder = sweep / str(job)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(f"- arm={arm}\n- seed={seed}\n")
    results = {f"toy accuracy ({s})": {"before": 0.0, "after": accuracy} for s in ("in_dist", "out_of_dist")}
    results |= {f"len / teacher ({s})": {"before": 9.0, "after": 1.0} for s in ("in_dist", "out_of_dist")}
    (folder / "summary.json").write_text(json.dumps({"phases": {}, "results": results}))
    rows = ["train/phase,train/reward_mean,train/response_len,train/teacher_len,val/nll", "0.0,-1,5,4,"]
    rows += [f"1.0,{r},4,4," for r in rewards] + [",,,,1.5"]
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_the_report_gives_mean_and_spread_over_seeds(tmp_path):
    for job, (arm, seed, acc) in enumerate([("gad", 1, 0.1), ("gad", 2, 0.3), ("seqkd", 1, 0.2), ("seqkd", 2, 0.2)]):
        fake_job(tmp_path, job, arm, seed, acc, rewards=[float(seed)] * 20)
    (tmp_path / "4").mkdir()  # a job that never finished: left out
    jobs = load_jobs(tmp_path)
    assert len(jobs) == 4
    table = results_table(jobs).splitlines()
    assert table[3].startswith("| gad | 2 | 0.200 ± 0.141 | 0.200 ± 0.141 | 1.000 ± 0.000")
    assert table[4].startswith("| seqkd | 2 | 0.200 ± 0.000")
    assert "| gad | 1.50 | 1.50 | 1.50 | 4.00 | 4.00 |" in adversarial_table(jobs)  # only adversarial rows count


def test_a_folder_without_finished_jobs_is_one_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "gad.analysis.evidence", str(tmp_path)], capture_output=True, text=True
    )
    assert_one_line_error(proc, "no finished jobs")


@pytest.mark.parametrize("arm", ["gad", "seqkd"])
def test_arms_are_named_in_the_experiment_sweep(arm):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=toy_evidence"], return_hydra_config=True)
    assert arm in cfg.hydra.sweeper.params.arm.split(",") and cfg.hydra.sweeper.params.seed == "1,2,3"


def compare_job(
    sweep, job: int, overrides: str, columns: dict[str, list[float]], wall_s: float, step_s: float = 0.0
) -> None:
    """A finished job of experiment=toy_compare: named by its method (and data) override, with cost columns."""
    import os

    folder = sweep / str(job)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(overrides)
    results = {f"toy accuracy ({s})": {"before": 0.0, "after": 0.1} for s in ("in_dist", "out_of_dist")}
    results |= {f"len / teacher ({s})": {"before": 9.0, "after": 1.0} for s in ("in_dist", "out_of_dist")}
    (folder / "summary.json").write_text(json.dumps({"phases": {}, "results": results, "step_seconds": step_s}))
    names = ["train/step", *columns, "val/nll"]
    rows = [",".join(names)]
    rows += [",".join([str(i + 1), *(str(v[i]) for v in columns.values()), ""]) for i in range(3)]
    rows.append("," * (len(names) - 1) + "1.5")  # the validation row
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n")
    (folder / "config.yaml").write_text("{}\n")
    os.utime(folder / "config.yaml", (1000.0, 1000.0))
    os.utime(folder / "summary.json", (1000.0 + wall_s, 1000.0 + wall_s))


def test_the_comparison_names_arms_by_method_and_teachers_and_counts_their_cost(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    compare_job(one, 0, "- method=gad\n- seed=1\n", {"train/generated_tokens": [10, 20, 30]}, 90, step_s=80)
    compare_job(one, 1, "- method=gad\n- seed=2\n", {"train/generated_tokens": [10, 10, 10]}, 110, step_s=100)
    compare_job(one, 2, "- method=seqkd\n- seed=1\n", {"train/sft_loss": [3, 2, 1]}, wall_s=40, step_s=30)
    snapshot = {"train/snapshot_tokens": [7, 7, 7], "train/snapshot_s": [0, 0, 0]}
    compare_job(two, 0, "- method=soda\n- data=toy_two_teachers\n- seed=1\n", snapshot, 50, step_s=20)
    jobs = load_jobs(one, two)
    assert sorted(jobs.arm) == ["gad", "gad", "seqkd", "soda, 2 teachers"]
    table = cost_table(jobs).splitlines()
    assert table[2] == "| gad | 2 | 3 | 90 | 100 | 45 |"  # tokens: (60 + 30) / 2; train: (80 + 100) / 2
    assert table[3] == "| seqkd | 1 | 3 | 30 | 40 | 0 |"
    # the snapshot counted once, not once per step; no loaded job drew it, so its training time is unknown
    assert table[4] == "| soda, 2 teachers | 1 | 3 | - | 50 | 7 |"
    plot_cost(jobs, tmp_path / "cost.png")
    assert (tmp_path / "cost.png").stat().st_size > 1000


def test_the_comparison_sweep_names_every_method():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=toy_compare"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params.method.split(",") == ["gad", "seqkd", "soda", "kd"]
    for method in ("soda", "kd"):
        validate(composed("experiment=toy_compare", f"method={method}"))


def test_equal_time_fills_gad_s_training_time_and_counts_soda_s_snapshot_once_per_seed(tmp_path):
    steps, timed = tmp_path / "steps", tmp_path / "timed"
    for seed, gad_s in ((1, 100.0), (2, 140.0)):
        compare_job(steps, seed * 10, f"- method=gad\n- seed={seed}\n", {"train/kl": [0, 0, 0]}, 150, step_s=gad_s)
        compare_job(steps, seed * 10 + 1, f"- method=seqkd\n- seed={seed}\n", {"train/kl": [0, 0, 0]}, 30, step_s=6)
        # seed 1's one-teacher job drew the snapshot (30 s); its two-teacher job found it drawn
        drawn = {"train/snapshot_s": [30.0 * (seed == 1)] * 3, "train/snapshot_tokens": [9] * 3}
        compare_job(steps, seed * 10 + 2, f"- method=soda\n- seed={seed}\n", drawn, 60, step_s=9)
    found = {"train/snapshot_s": [0.0] * 3, "train/snapshot_tokens": [9] * 3}
    compare_job(steps, 30, "- method=soda\n- data=toy_two_teachers\n- seed=1\n", found, 60, step_s=12)
    jobs = load_jobs(steps)
    # GAD's mean training time is 120 s; SeqKD: 2 s a step; SODA: 3 s a step after its snapshot (seed 1: 30 s,
    # seed 2: none drawn, so unknown and not in the mean)
    assert equal_time_steps(jobs) == {"seqkd": 60, "soda": 30}
    two = jobs[jobs.arm == "soda, 2 teachers"].iloc[0]
    assert two.train_s == 12 + 30  # the snapshot its seed's one-teacher job drew counts for it too

    compare_job(timed, 0, "- method=seqkd\n- method.steps=60\n- seed=1\n", {"train/kl": [0] * 3}, 130, step_s=118)
    jobs = load_jobs(steps, equal_time=(timed,))
    assert sorted(set(jobs.arm), key=list(jobs.arm).index)[-1] == "seqkd, equal time"
    assert "| seqkd, equal time | 1 | 3 | 118 | 130 | 0 |" in cost_table(jobs)
    assert equal_time_steps(jobs) == {"seqkd": 60, "soda": 30}  # equal-time arms are not rescaled
    plot_accuracy(jobs, tmp_path / "accuracy.png")
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
