"""The two-teacher toy dump (data=toy_two_teachers) trains GAD, SeqKD and SODA through `python src/train.py`, and
GAD logs D's mean score of each teacher's responses (`train/d_score/<teacher>`), SODA its chosen reward per teacher."""

from __future__ import annotations

import csv

import pytest
from conftest import ROOT, fast_overrides, run_entry

TEACHERS = ("toy-rules", "toy-rules-labelled")


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    """The first 40 prompts of data/toy_two_teachers (80 rows, both teachers' answer to each prompt)."""
    path = tmp_path_factory.mktemp("two") / "train.jsonl"
    path.write_text("".join((ROOT / "data/toy_two_teachers/train.jsonl").read_text().splitlines(keepends=True)[:80]))
    return path


def train(tmp_path, dump, *overrides):
    args = [f"paths.log_dir={tmp_path}", f"paths.cache_dir={tmp_path}/cache", "data=toy_two_teachers"]
    proc = run_entry("train.py", *args, f"data.path={dump}", "callbacks.step_checkpoint=null", *overrides)
    assert proc.returncode == 0, f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "train prompts" in proc.stdout  # the data table counts prompts, not rows
    run = sorted((tmp_path / "train" / "runs").iterdir())[-1]
    return [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get("train/step")]


def test_gad_logs_each_teachers_d_score(dump, tmp_path):
    rows = train(tmp_path, dump, "debug=fast")
    assert len(rows) == 6
    for teacher in TEACHERS:
        values = [float(r[f"train/d_score/{teacher}"]) for r in rows]
        assert all(v == v for v in values)  # logged at every step (a NaN is not)
    # D learns the two styles apart from the samples differently: the two teachers' scores are not one number
    assert any(r["train/d_score/toy-rules"] != r["train/d_score/toy-rules-labelled"] for r in rows)
    assert all(float(r["train/generated_tokens"]) > 0 for r in rows)


@pytest.mark.parametrize("method", ["seqkd", "soda"])
def test_seqkd_and_soda_train_on_both_teachers(method, dump, tmp_path):
    rows = train(tmp_path, dump, *fast_overrides("method."), f"method={method}", "method.steps=3")
    assert len(rows) == 3
    # Each prompt's two rows: "68" (>= 2 tokens with the end of turn) and "Answer: 68" (8 more), so a step's mean is
    # >= 6; one teacher's alone is about 4 (docs/results.md)
    assert all(float(r["train/teacher_len"]) >= 6 for r in rows)
    if method == "soda":
        assert all(f"train/chosen_reward/{t}" in rows[0] for t in TEACHERS)
