"""gad.analysis: run logs as tables, the figures, and scoring with a run's discriminator.

The table/plot tests use hand-made logs with known answers; the scoring tests use one short
GAD run on the toy world (`tiny_run`, shared with test_notebook.py).
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from gad.analysis import (  # noqa: E402
    as_messages,
    correlation,
    early_late_steps,
    extreme_samples,
    length_correlations,
    load_discriminator,
    load_metrics,
    load_rollouts,
    metrics_frame,
    plot_length_over_training,
    plot_score_histograms,
    plot_score_vs_length,
    plot_training_curves,
    resolve_run_dir,
    rollouts_frame,
    user_turn,
    warmup_end,
)
from gad.analysis.plots import BOUNDARY_LABEL  # noqa: E402
from gad.errors import GADError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- the shared short run

WARMUP, ADVERSARIAL, CKPT_EVERY = 4, 4, 3
TINY_RUN = [
    f"method.warmup_steps={WARMUP}",
    "method.d_only_steps=1",
    f"method.adversarial_steps={ADVERSARIAL}",
    "method.num_samples=3",
    "data.batch_size=4",
    "data.max_response_tokens=12",
    "data.val_size=8",
    "trainer.val_check_interval=1000",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.toy_accuracy=null",
    "callbacks.progress_bar=null",
    "callbacks.rollout_samples.every_n_steps=1",
    f"callbacks.step_checkpoint.every_n_steps={CKPT_EVERY}",
]


def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished GAD run of the default experiment, shortened (8 steps); made once per session."""
    log_dir = tmp_path_factory.getbasetemp() / "analysis-run"
    runs = log_dir / "train" / "runs"
    done = sorted(p for p in runs.glob("*") if (p / "summary.json").is_file()) if runs.is_dir() else []
    if done:
        return done[-1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "src" / "train.py"),
            f"paths.log_dir={log_dir}",
            f"paths.cache_dir={log_dir}/cache",
            *TINY_RUN,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return sorted(p for p in runs.glob("*") if (p / "config.yaml").is_file())[-1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def scorer(run_dir):
    return load_discriminator(run_dir)


# ---------------------------------------------------------------- hand-made logs

CSV = """epoch,step,train/d_acc,train/d_loss,train/kl,train/phase,train/response_len,train/reward_mean,train/reward_std,train/score_gap,train/step,train/student_score,train/teacher_len,train/teacher_score,val/nll
0,0,0.5,0.7,,0.0,20,0.1,0.2,0.3,1.0,0.1,5,0.4,
0,1,0.6,0.6,,0.0,18,0.2,0.2,0.4,2.0,0.2,5,0.6,
0,2,0.7,0.5,,0.0,16,0.1,0.3,0.5,3.0,0.1,5,0.6,
0,3,0.8,0.4,0.01,1.0,14,-0.2,0.3,0.6,4.0,-0.2,5,0.4,
0,4,0.7,0.5,0.02,1.0,12,-0.1,0.3,0.5,5.0,-0.1,5,0.4,
0,4,,,,,,,,,,,,,3.2
"""


def record(step: int, pid: str, teacher: float, samples: list[tuple[float, int]], phase: str = "warmup") -> dict:
    return {
        "step": step,
        "phase": phase,
        "id": pid,
        "prompt": f"<|im_start|>user\n{pid}<|im_end|>\n",
        "teacher": f"T-{pid}",
        "teacher_score": teacher,
        "teacher_length": 3,
        "samples": [{"text": f"S-{pid}-{j}", "score": s, "length": n} for j, (s, n) in enumerate(samples)],
    }


RECORDS = [
    record(2, "a", 1.0, [(0.5, 10), (-1.0, 20)]),
    # with warmup_steps=4 step 4 is still warm-up; the callback labels it "adversarial" (it reads the phase after the step)
    record(4, "b", 2.0, [(1.5, 5), (0.0, 12)], phase="adversarial"),
    record(6, "c", 0.5, [(3.0, 8), (-2.0, 24)], phase="adversarial"),
    record(8, "d", 1.0, [(0.2, 9), (0.1, 11)], phase="adversarial"),
]


@pytest.fixture
def metrics() -> pd.DataFrame:
    return metrics_frame(pd.read_csv(io.StringIO(CSV)))


@pytest.fixture
def rollouts() -> pd.DataFrame:
    return rollouts_frame(RECORDS, warmup_steps=4)


def test_metrics_one_row_per_step_without_prefix(metrics):
    assert list(metrics.index) == [1, 2, 3, 4, 5]  # train/step, not Lightning's 0-based step; val row dropped
    assert {"d_loss", "d_acc", "phase", "kl", "score_gap"} <= set(metrics.columns)
    assert not any(c.startswith("train/") for c in metrics.columns)
    assert metrics.loc[4, "kl"] == pytest.approx(0.01)


def test_metrics_rejects_a_foreign_csv(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,step,loss\n0,0,1.0\n")
    with pytest.raises(GADError, match="train/step"):
        load_metrics(tmp_path)
    with pytest.raises(GADError, match="no such metrics file"):
        load_metrics(tmp_path / "missing")


def test_warmup_end_is_the_last_warmup_step(metrics):
    assert warmup_end(metrics) == 3
    assert warmup_end(metrics.assign(phase=0.0)) is None  # never adversarial
    assert warmup_end(metrics.drop(columns="phase")) is None  # SeqKD: no phases
    assert warmup_end(metrics.assign(phase=1.0)) == 0  # adversarial from the first step


def test_rollouts_long_format_and_phase_from_step(rollouts):
    assert len(rollouts) == 4 * 3  # teacher + 2 samples per record
    teacher = rollouts[rollouts["role"] == "teacher"]
    assert list(teacher["text"]) == ["T-a", "T-b", "T-c", "T-d"] and teacher["sample"].isna().all()
    # step 4 was sampled during the 4th step, still warm-up with warmup_steps=4, whatever its record says
    assert rollouts.groupby("step")["phase"].first().to_dict() == {
        2: "warm-up",
        4: "warm-up",
        6: "adversarial",
        8: "adversarial",
    }
    row = rollouts[(rollouts["id"] == "c") & (rollouts["sample"] == 0)].iloc[0]
    assert (row["score"], row["length"], row["teacher_score"], row["teacher_text"]) == (3.0, 8, 0.5, "T-c")
    assert row["margin"] == pytest.approx(2.5)
    # without warmup_steps the records' own phase is used
    assert rollouts_frame(RECORDS).groupby("step")["phase"].first()[4] == "adversarial"


def test_load_rollouts_reads_the_boundary_from_the_config(tmp_path):
    (tmp_path / "config.yaml").write_text("method:\n  warmup_steps: 5\n")
    (tmp_path / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    phases = load_rollouts(tmp_path).groupby("step")["phase"].first().to_dict()
    assert phases == {2: "warm-up", 4: "warm-up", 6: "adversarial", 8: "adversarial"}
    assert load_rollouts(tmp_path, warmup_steps=1).groupby("step")["phase"].first()[2] == "adversarial"


@pytest.mark.parametrize("bad", ["[" * 100_000 + "]" * 100_000, '{"id": "\\ud800"}', "{not json"])
def test_a_received_runs_bad_rollout_line_is_one_line_naming_it(tmp_path, bad):
    from gad.errors import GADError

    (tmp_path / "config.yaml").write_text("method:\n  warmup_steps: 5\n")
    lines = [json.dumps(r) for r in RECORDS]
    (tmp_path / "rollouts.jsonl").write_text("\n".join([lines[0], bad, *lines[1:]]) + "\n")
    with pytest.raises(GADError, match="rollouts.jsonl line 2: "):
        load_rollouts(tmp_path)


def test_user_turn():
    chatml = (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nfirst<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
        "<|im_start|>user\nAdd: 1\n2<|im_end|>\n<|im_start|>assistant\n"
    )
    assert user_turn(chatml) == "Add: 1\n2"  # the last user turn, newlines kept
    llama3 = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    assert user_turn(llama3) == "Hi"
    assert user_turn("no markup") == "no markup"


def test_correlation_on_known_data():
    assert correlation([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert correlation([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(-1.0)
    assert correlation([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert correlation([1, 2, 3, 4], [1, 10, 100, 1000], method="spearman") == pytest.approx(1.0)
    assert correlation([1, 2, float("nan"), 4], [1, 2, 100, 4]) == pytest.approx(1.0)  # NaN pairs dropped
    assert math.isnan(correlation([1, 1, 1], [1, 2, 3])) and math.isnan(correlation([1], [2]))


def test_length_correlations_per_phase(rollouts):
    table = length_correlations(rollouts)
    assert list(table.index) == ["all", "warm-up", "adversarial"]
    assert table.loc["warm-up", "n"] == 4 and table.loc["adversarial", "n"] == 4
    students = rollouts[(rollouts["role"] == "student") & (rollouts["phase"] == "adversarial")]
    assert table.loc["adversarial", "pearson"] == pytest.approx(students["length"].corr(students["score"]))
    assert table.loc["adversarial", "pearson"] < 0  # long samples scored low here


def test_early_late_steps():
    assert early_late_steps([1, 2, 3, 4, 5, 6, 6, 6]) == ([1, 2], [5, 6])
    assert early_late_steps([10, 20], fraction=0.25) == ([10], [20])
    assert early_late_steps([7]) == ([7], [7])
    assert early_late_steps([]) == ([], [])


def test_extreme_samples_next_to_the_teacher(rollouts):
    ex = extreme_samples(rollouts, k=2)
    assert list(ex["rank"]) == ["highest", "highest", "lowest", "lowest"]
    assert list(ex["sample_score"]) == [3.0, 1.5, -2.0, -1.0]
    assert list(ex["teacher"]) == ["T-c", "T-b", "T-c", "T-a"]  # the teacher of the same prompt and step
    assert list(ex["sample"]) == ["S-c-0", "S-b-0", "S-c-1", "S-a-1"]
    assert list(ex["prompt"]) == ["c", "b", "c", "a"]  # the user turn, chat markup removed
    adv = extreme_samples(rollouts, k=1, phase="adversarial")
    assert set(adv["step"]) <= {6, 8} and list(adv["sample_score"]) == [3.0, -2.0]
    few = extreme_samples(rollouts[rollouts["step"] == 2], k=5)  # 2 samples: each listed once
    assert sorted(few["sample"]) == ["S-a-0", "S-a-1"]


def _texts(fig: Figure) -> str:
    parts = [fig._suptitle.get_text() if fig._suptitle else ""]
    for ax in fig.axes:
        parts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        legend = ax.get_legend()
        parts += [t.get_text() for t in legend.get_texts()] if legend else []
    return "\n".join(parts)


def test_training_curves_are_labelled_and_mark_the_boundary(metrics):
    fig = plot_training_curves(metrics)
    assert isinstance(fig, Figure) and len(fig.axes) == 6
    for ax in fig.axes:
        assert ax.get_title() and ax.get_ylabel()
        lines = [ln for ln in ax.get_lines() if ln.get_label() == BOUNDARY_LABEL]
        assert len(lines) == 1 and list(lines[0].get_xdata()) == [3.5, 3.5]
    text = _texts(fig)
    for word in ("Discriminator loss", "accuracy", "teacher (mean)", "student (mean)", "gap", "reward", "length", "KL"):
        assert word in text
    no_phase = plot_training_curves(metrics.drop(columns=["phase", "kl"]))
    assert "not logged" in " ".join(t.get_text() for t in no_phase.axes[5].texts)
    assert not any(ln.get_label() == BOUNDARY_LABEL for ax in no_phase.axes for ln in ax.get_lines())


def test_rollout_figures(rollouts, metrics, tmp_path):
    hist = plot_score_histograms(rollouts, fraction=0.5)
    text = _texts(hist)
    assert "steps 2-4 (warm-up)" in text and "steps 6-8 (adversarial)" in text
    assert "teacher (n=2, mean 1.50)" in text and "student (n=4, mean 0.25)" in text
    scatter = plot_score_vs_length(rollouts)
    assert "Pearson r = " in scatter.axes[0].get_title() and "length" in scatter.axes[0].get_xlabel()
    lengths = plot_length_over_training(metrics, rollouts)
    assert BOUNDARY_LABEL in _texts(lengths)
    from gad.analysis import save_figure

    path = save_figure(lengths, tmp_path / "sub" / "len.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resolve_run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GAD_RUN_DIR", str(tmp_path))
    with pytest.raises(GADError, match="not a training run folder"):
        resolve_run_dir()
    (tmp_path / "config.yaml").write_text("{}\n")
    assert resolve_run_dir() == tmp_path
    other = tmp_path / "x"
    other.mkdir()
    (other / "config.yaml").write_text("{}\n")
    assert resolve_run_dir(other) == other  # an explicit folder wins over the variable
    monkeypatch.delenv("GAD_RUN_DIR")
    monkeypatch.setenv("PROJECT_ROOT", str(tmp_path))
    for name in ("2026-01-01_00-00-00", "2026-01-02_00-00-00"):
        (tmp_path / "outputs" / "train" / "runs" / name).mkdir(parents=True)
        (tmp_path / "outputs" / "train" / "runs" / name / "config.yaml").write_text("{}\n")
    assert resolve_run_dir().name == "2026-01-02_00-00-00"


def test_as_messages():
    assert as_messages("hi") == [{"role": "user", "content": "hi"}]
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert as_messages(chat) == chat
    for bad, match in (
        ([], "non-empty"),
        ([{"role": "user"}], "role: str, content: str"),
        ([{"role": "assistant", "content": "a"}], "end with a user turn"),
        (3, "string or"),
    ):
        with pytest.raises(GADError, match=match):
            as_messages(bad)


# ---------------------------------------------------------------- the real run


def test_real_run_tables(run_dir):
    metrics = load_metrics(run_dir)
    assert list(metrics.index) == list(range(1, WARMUP + ADVERSARIAL + 1))
    assert warmup_end(metrics) == WARMUP
    rollouts = load_rollouts(run_dir)
    assert sorted(set(rollouts["step"])) == list(range(1, WARMUP + ADVERSARIAL + 1))
    assert set(rollouts.loc[rollouts["step"] <= WARMUP, "phase"]) == {"warm-up"}
    assert set(rollouts.loc[rollouts["step"] > WARMUP, "phase"]) == {"adversarial"}


def test_teacher_response_encoded_as_in_training(scorer):
    tok = scorer.tokenizer
    eos_id = tok.convert_tokens_to_ids(tok.eos_token)
    assert tok.eos_token == "<|im_end|>"
    (row,) = scorer.encode([("Add: 45 23", "68")])
    assert row["response_ids"] == tok("68", add_special_tokens=False)["input_ids"] + [eos_id]
    assert row["prompt_ids"] == tok.apply_chat_template(
        [{"role": "user", "content": "Add: 45 23"}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    # an end-of-turn already typed is not doubled; a string prompt is one user turn
    (same,) = scorer.encode([([{"role": "user", "content": "Add: 45 23"}], "68<|im_end|>")])
    assert same["response_ids"] == row["response_ids"] and same["prompt_ids"] == row["prompt_ids"]
    # a response over data.max_response_tokens (12 here) is cut, its end-of-turn with it, as in training
    (long,) = scorer.encode([("Add: 45 23", "x" * 30)])
    assert long["response_ids"] == [ord("x")] * 12
    # the prompt text of rollouts.jsonl re-tokenises to the same ids
    text = tok.decode(row["prompt_ids"], skip_special_tokens=False)
    (rendered,) = scorer.encode([(text, "68")], rendered=True)
    assert rendered["prompt_ids"] == row["prompt_ids"]
    batch = scorer.batch([("Add: 45 23", "68"), ("Count a in abcab", "2 2")])
    assert batch["response_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]  # right-padded responses
    assert batch["prompt_mask"][:, 0].tolist() == [0, 1]  # left-padded prompts


PAIRS = [
    ("Add: 45 23", "68"),
    ("Add: 45 23", "69"),
    ("Reverse: 3 9 0", "0 9 3"),
    ("Sort: 3 7 1", "1 3 7 and more words"),
    ([{"role": "user", "content": "Max: 3 7 1"}], "7"),
    ("Count b in babcd", ""),
    ("Add: 1 2", "3"),
]


def test_batch_scores_equal_one_by_one(scorer):
    batched = scorer.score(PAIRS, batch_size=len(PAIRS))
    single = [scorer.score([p], batch_size=1)[0] for p in PAIRS]
    chunked = scorer.score(PAIRS, batch_size=3)
    assert len(batched) == len(PAIRS)
    assert batched == pytest.approx(single, abs=1e-5)
    assert chunked == pytest.approx(single, abs=1e-5)
    assert len(set(round(s, 4) for s in single)) > 1  # D does tell the pairs apart


def test_scoring_is_deterministic(scorer, run_dir):
    first = scorer.score(PAIRS, batch_size=4)
    assert scorer.score(PAIRS, batch_size=4) == first
    assert load_discriminator(run_dir).score(PAIRS, batch_size=4) == first  # a fresh load, same checkpoint


def test_scores_reproduce_training(run_dir):
    """Rollouts of step k were scored by D after k-1 updates: rescoring them with step_<k-1>.ckpt
    gives the logged scores (the teacher's always; samples whose decoded text re-tokenises exactly)."""
    rollouts = load_rollouts(run_dir)
    ckpt_step = CKPT_EVERY
    scorer = load_discriminator(run_dir, ckpt_step)
    assert scorer.step == ckpt_step
    logged = rollouts[rollouts["step"] == ckpt_step + 1]
    teacher = logged[logged["role"] == "teacher"]
    assert len(teacher) > 0
    rescored = scorer.score(list(zip(teacher["prompt"], teacher["text"])), rendered=True)
    assert rescored == pytest.approx(list(teacher["score"]), abs=1e-4)
    tok = scorer.tokenizer
    students = logged[logged["role"] == "student"]
    exact = students[
        [
            len(tok(t, add_special_tokens=False)["input_ids"]) + 1 == n
            and tok.decode(tok(t, add_special_tokens=False)["input_ids"]) == t
            for t, n in zip(students["text"], students["length"])
        ]
    ]
    if len(exact):
        got = scorer.score(list(zip(exact["prompt"], exact["text"])), rendered=True)
        assert got == pytest.approx(list(exact["score"]), abs=1e-4)
    # a later D scores the same pairs differently: the check above is not vacuous
    later = load_discriminator(run_dir).score(list(zip(teacher["prompt"], teacher["text"])), rendered=True)
    assert later != pytest.approx(list(teacher["score"]), abs=1e-4)


def test_load_discriminator_errors(run_dir, tmp_path):
    with pytest.raises(GADError, match="no checkpoint of step 4"):
        load_discriminator(run_dir, 4)
    with pytest.raises(GADError, match="no such checkpoint"):
        load_discriminator(run_dir, tmp_path / "nope.ckpt")
    with pytest.raises(GADError, match="not a training run folder"):
        load_discriminator(tmp_path)
    scorer = load_discriminator(run_dir, 6)
    assert scorer.step == 6 and scorer.checkpoint.name.startswith("step_")
    with pytest.raises(GADError, match="batch_size"):
        scorer.score(PAIRS, batch_size=0)
    assert scorer.score([]) == []
    assert isinstance(scorer.score_batch(scorer.batch(PAIRS[:2])), torch.Tensor)


def test_export_command_writes_the_figure(run_dir, tmp_path, monkeypatch, capsys):
    from gad.analysis.__main__ import main

    monkeypatch.setenv("GAD_RUN_DIR", str(run_dir))
    main(["--out", str(tmp_path), "training_curves", "score_vs_length"])  # `python -m gad.analysis ...`
    for name in ("training_curves", "score_vs_length"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert str(tmp_path / "training_curves.png") in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), "nope"])
    assert exit_info.value.code == 2 and "unknown figure" in capsys.readouterr().err
