"""Inputs that used to crash with a traceback end with one line instead: a fractional count, an
infinite learning rate or temperature (config validation), Ctrl-C in src/eval.py (exit 130,
caches kept: what was generated before the interrupt is in the journal), and a full disk in any write
(the checkpoints' and the export's own lines: tests/test_run_lifecycle.py)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from chat_server import ChatServer
from conftest import ROOT, assert_one_line_error, run_entry, train
from hydra import compose, initialize_config_dir

from gad.config.validate import validate
from gad.errors import GADError, exit_on_user_error


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"paths.root_dir={ROOT}", "paths.output_dir=/tmp/gad-test-out", *overrides])


@pytest.mark.parametrize(
    "override, key, why",
    [
        ("method.num_samples=2.5", "method.num_samples", "integer"),
        ("method.warmup_steps=3.5", "method.warmup_steps", "integer"),
        ("data.batch_size=true", "data.batch_size", "integer"),
        ("method.generator_optimizer.lr=inf", "method.generator_optimizer.lr", "finite"),
        ("method.discriminator_optimizer.lr=-inf", "method.discriminator_optimizer.lr", "finite"),
        ("method.temperature=inf", "method.temperature", "finite"),
        ("method.kl_coef=inf", "method.kl_coef", "finite"),
        ("method.generator_optimizer.lr=nan", "method.generator_optimizer.lr", "finite"),
    ],
)
def test_non_counts_and_infinities_name_the_key(override, key, why):
    with pytest.raises(GADError, match=rf"^{key}=\S+ is invalid: .*{why}"):
        validate(composed(override))


def test_fractional_sample_count_is_one_line_from_the_entry(tmp_path):
    proc = run_entry("train.py", f"paths.log_dir={tmp_path}", "method.num_samples=2.5")
    assert_one_line_error(proc, "method.num_samples=2.5", "integer")


def test_ctrl_c_in_eval_is_one_line_exit_130_and_keeps_the_caches(tmp_path):
    run = train(tmp_path / "train")
    key_env = "GAD_CRASH_TEST_KEY"
    log_dir = tmp_path / "eval_logs"
    base = [
        sys.executable,
        str(ROOT / "src" / "eval.py"),
        f"paths.log_dir={log_dir}",
        "progress=false",
        f"models={{after: '{run}'}}",
        f"prompt_sets={{id: '{ROOT}/data/toy/test_id.jsonl'}}",
        "limit=4",
    ]
    # PYTHONFAULTHANDLER: if eval does not end, SIGABRT makes it print every thread's stack (the failure message)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", key_env: "k"}
    with ChatServer(latency=120) as judge:  # every judge request hangs: interrupt while waiting for one
        proc = subprocess.Popen(
            [
                *base,
                "judge=gpt4o",
                f"judge.base_url={judge.base_url}",
                f"judge.api_key_env={key_env}",
                "judge.model=test-judge",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 240
        while not judge.requests and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert judge.requests, "eval never reached the judge"
        time.sleep(1.0)  # the server counts a request on its first line: let the client be waiting for the reply
        proc.send_signal(signal.SIGINT)  # one Ctrl-C must be enough
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            out, err = proc.communicate(timeout=60)
            pytest.fail(f"eval still running 60 s after Ctrl-C; its threads when aborted:\n{err[-6000:]}")
    assert proc.returncode == 130, err[-2000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert errors == [err.strip().splitlines()[-1]] and errors[0].startswith("error: interrupted"), err[-2000:]
    assert "Traceback" not in out + err
    # the generations and perplexities made before the interrupt are in the cache, whole
    journals = list((log_dir / "eval" / "cache" / "students").glob("*.jsonl"))
    kept = [json.loads(line) for path in journals for line in open(path)]
    assert sum(r["id"].startswith("gen:") for r in kept) == 4 and sum(r["id"].startswith("nll:") for r in kept) == 4


@pytest.mark.parametrize("named", [True, False], ids=["OSError", "SafetensorError-like"])
def test_a_full_disk_in_a_write_without_its_own_line_is_still_one_line(tmp_path, capsys, named):
    target = tmp_path / "metrics.csv"  # a small write no `gad.errors.writing` block covers
    with pytest.raises(SystemExit) as ended, exit_on_user_error():
        if named:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        raise RuntimeError("I/O error: No space left on device (os error 28)")  # a Rust writer: no OSError, no file
    assert ended.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "no space left on device" in lines[0], lines
    if named:
        assert lines[0].startswith(f"error: cannot write {target}: no space left on device (") and "free on" in lines[0]
    assert lines[0].endswith("then run again, or resume a training run with ckpt_path=<its checkpoints/last.ckpt>")
