"""What a run prints: no warnings or foreign progress bars, uncut tables on stdout, a progress
bar that knows the plan (plain lines off a terminal), the run's figures in its folder."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import datasets
import pytest
import transformers
from conftest import fast_overrides, run_entry
from rich.console import Console

import gad.console
from gad.callbacks.progress import phase_label, plan, plan_line
from gad.callbacks.summary import RunSummary
from gad.methods.base import DistillModule
from gad.methods.gad import GADModule
from gad.step_record import Phase, StepRecord

# conf/debug/fast.yaml without its switches that turn the progress bar and the model summary off: the
# default run's console, on a few steps; toy accuracy on 4 prompts so its greedy decoding runs too.
QUIET_FAST = fast_overrides(
    "callbacks.progress_bar", "trainer.enable_", "callbacks.toy_accuracy", "callbacks.summary.figures"
)
QUIET_FAST += ["callbacks.toy_accuracy.limit=4", "callbacks.rollout_samples.every_n_steps=2"]

NOISE = [
    re.compile(r"warn", re.IGNORECASE),  # Python warnings, library loggers' WARNING lines
    re.compile(r"deprecat", re.IGNORECASE),
    re.compile(r"\.py:\d+: "),  # a warning's source location (Lightning's omit the category)
    re.compile(r"^\[?(transformers|datasets|wandb|mlflow)\b", re.IGNORECASE),  # library loggers' prefixes
    re.compile(r"\d+%\|"),  # tqdm bars ("Saving the dataset", "Writing model shards")
    re.compile(r"(it|examples)/s\]"),
    re.compile(r"GPU available|TPU available|Tip:|LitLogger"),  # Lightning's info lines
    re.compile(r"Traceback"),
]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """A piped `python src/train.py` with the default console (fresh cache: the dataset is built)."""
    log_dir = tmp_path_factory.mktemp("logs")
    proc = run_entry(  # a fresh interpreter: what the libraries print as they load is part of the terminal
        "train.py", f"paths.log_dir={log_dir}", f"paths.cache_dir={log_dir}/cache", *QUIET_FAST, warm=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = sorted((log_dir / "train" / "runs").iterdir())[-1]
    return proc, run


def test_default_run_prints_no_warnings_and_no_foreign_progress_bars(default_run):
    proc, _ = default_run
    output = proc.stdout + proc.stderr
    noisy = [line for line in output.splitlines() if any(p.search(line) for p in NOISE)]
    assert not noisy, "\n".join(noisy)
    assert proc.stderr == ""  # every human-facing line is on stdout; stderr is for errors


def test_default_run_names_its_folder_once_and_prints_whole_tables(default_run):
    proc, run = default_run
    assert proc.stdout.count("run folder:") == 1 and proc.stdout.splitlines()[0] == f"run folder: {run}"
    for title in ("data", "networks", "run summary", "held-out results"):
        assert re.search(rf"^\s*{title}", proc.stdout, re.MULTILINE), title
    assert "…" not in proc.stdout  # piped, rich must not cut a cell (it did at 80 columns: "rewa…")
    assert "MeanMetric" not in proc.stdout and "FLOPs" not in proc.stdout


def test_progress_lines_know_the_plan(default_run):
    proc, _ = default_run
    assert "plan: 6 steps = warm-up, D only 1 -> warm-up 2 -> adversarial 3" in proc.stdout
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("step ")]
    # off a terminal: the first step, the last step of each phase, the last step (every_n_steps=20 > 6)
    assert [ln.split(" · ")[:2] for ln in lines] == [
        ["step 1/6 (17%)", "warm-up, D only"],
        ["step 3/6 (50%)", "warm-up"],
        ["step 6/6 (100%)", "adversarial"],
    ]
    assert all("ETA" in ln and "D acc" in ln and "vs teacher" in ln for ln in lines)
    assert "reward" not in lines[1] and "CE" in lines[1]  # no policy step in warm-up: D's scores are no reward
    assert "reward" in lines[2] and "KL" in lines[2]


def test_run_folder_holds_the_figures(default_run):
    proc, run = default_run
    for name in ("training_curves.png", "d_score_histograms.png", "response_length.png"):
        path = run / "figures" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    assert f"figures: {run}/figures/" in proc.stdout


def test_verbose_brings_library_output_back_and_quiet_turns_it_off():
    try:
        gad.console.quiet_libraries(verbose=False)
        assert not datasets.is_progress_bar_enabled() and not transformers.utils.logging.is_progress_bar_enabled()
        gad.console.quiet_libraries(verbose=True)
        assert datasets.is_progress_bar_enabled() and transformers.utils.logging.is_progress_bar_enabled()
    finally:
        gad.console.quiet_libraries(verbose=True)  # the libraries' defaults, for the tests that follow


def test_verbose_is_a_config_key():
    proc = run_entry("train.py", "verbose=true", "--cfg", "job")
    assert proc.returncode == 0 and "verbose: true" in proc.stdout


def gad_schedule(**overrides) -> SimpleNamespace:
    """The state GADModule.schedule reads, with its real schedule bound to it."""
    module = SimpleNamespace(
        completed_steps=0,
        warmup_steps=120,
        d_only_steps=5,
        adversarial_steps=40,
        off_policy=False,
        off_policy_d_steps=0,
        generator_warmup=True,
        discriminator_warmup=True,
    )
    vars(module).update(overrides)
    module.schedule = lambda: GADModule.schedule(module)
    module.phase_name = lambda: GADModule.phase_name(module)  # the method names its phases
    module.total_steps = module.warmup_steps + module.off_policy_d_steps + module.adversarial_steps
    return module


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, [("warm-up, D only", 5), ("warm-up", 115), ("adversarial", 40)]),
        ({"generator_warmup": False}, [("warm-up, D only", 120), ("adversarial", 40)]),
        ({"discriminator_warmup": False, "d_only_steps": 0}, [("warm-up, G only", 120), ("adversarial", 40)]),
        (
            {"off_policy": True, "off_policy_d_steps": 30},
            [("warm-up, D only", 5), ("warm-up", 115), ("D on frozen G", 30), ("adversarial", 40)],
        ),
    ],
)
def test_plan_follows_the_methods_schedule(overrides, expected):
    module = gad_schedule(**overrides)
    module.completed_steps = 7
    assert plan(module) == expected
    assert module.completed_steps == 7  # reading the plan leaves the step counter alone
    assert phase_label(module) == (expected[0][0] if expected[0][1] > 7 else expected[1][0])  # step 8's phase


def test_plan_line_of_a_method_without_phases():
    seqkd = SimpleNamespace(completed_steps=0, total_steps=50)
    seqkd.schedule = lambda: DistillModule.schedule(seqkd)  # the base class's: no phases
    seqkd.phase_name = lambda: DistillModule.phase_name(seqkd)
    assert plan_line(seqkd) == "plan: 50 steps = training 50"


def test_summary_calls_no_warmup_score_a_reward(tmp_path, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(gad.console, "_console", Console(file=out, width=200))
    summary = RunSummary(str(tmp_path), figures=False)
    trainer = SimpleNamespace(is_global_zero=True)
    for step, (phase, reward) in enumerate(((Phase.WARMUP, -0.596), (Phase.ADVERSARIAL, -1.657)), start=1):
        outputs = {"train/phase": phase.code, "train/d_acc": 0.5, "train/reward_mean": reward, "train/score_gap": 0.1}
        module = SimpleNamespace(last_step=StepRecord(step, phase, outputs, batch={}))
        summary.on_train_batch_end(trainer, module, outputs, None, 0)
    summary.on_fit_end(trainer, None)
    rows = {line.split("│")[1].strip(): line for line in out.getvalue().splitlines() if line.startswith("│")}
    assert "-0.596" not in rows["warmup"] and "-1.657" in rows["adversarial"]


@pytest.mark.parametrize("verbose", [False, True])
def test_a_library_s_own_tqdm_bar_is_off_unless_verbose(verbose):
    """transformers' GGUF conversion draws its bar with tqdm directly, past transformers' switch."""
    code = f"""
from omegaconf import OmegaConf
from gad.cli import start

def body(cfg):
    from tqdm.auto import tqdm  # as transformers.modeling_gguf_pytorch_utils does
    for _ in tqdm(range(3), desc="a library's bar"):
        pass

start(OmegaConf.create({{"verbose": {verbose}, "paths": {{"output_dir": "."}}}}), "__main__:body",
      returns_status=False, console=True)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("a library's bar" in proc.stderr) == verbose, proc.stderr[-2000:]
