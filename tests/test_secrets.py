"""An API key passed on the command line is refused before Hydra writes anything: no .hydra/ files,
no run folder, and the key never appears in stdout, stderr or any file; the line names the
environment-variable knob to use instead."""

from __future__ import annotations

import pytest
from conftest import ROOT, assert_one_line_error, run_entry

from gad.errors import GADError, refuse_secrets

SENTINEL = "sk-proj-SENTINEL0secret0abcdef0123456789"


@pytest.mark.parametrize(
    "script, overrides, knob",
    [
        ("collect.py", ["teacher.api_key_env=" + SENTINEL], "teacher.api_key_env"),
        ("collect.py", ["+teacher.api_key=" + SENTINEL], "teacher.api_key_env"),
        ("collect.py", ["++teacher.api_key=" + SENTINEL], "teacher.api_key_env"),
        ("eval.py", ["judge=gpt4o", "judge.api_key_env=" + SENTINEL], "judge.api_key_env"),
        ("eval.py", ["judge=gpt4o", "+judge.api_key=" + SENTINEL], "judge.api_key_env"),
        ("train.py", ["method=kd", "+method.teacher.api_key=" + SENTINEL], "method.teacher.api_key_env"),
        ("train.py", ["data.path=" + SENTINEL], "api_key_env"),  # key-shaped anywhere
    ],
)
def test_key_on_the_command_line_is_refused_before_hydra_writes(tmp_path, script, overrides, knob):
    args = [f"paths.log_dir={tmp_path}/logs", f"prompts={ROOT}/data/toy/test_id.jsonl", f"output={tmp_path}/out.jsonl"]
    if script != "collect.py":
        args = args[:1]
    proc = run_entry(script, *args, *overrides, cwd=tmp_path)
    line = assert_one_line_error(proc, knob, "environment variable")
    assert SENTINEL not in proc.stdout + proc.stderr and SENTINEL not in line
    assert not list(tmp_path.rglob(".hydra")) and not (tmp_path / "logs").exists()
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and SENTINEL.encode() in p.read_bytes()]


def test_names_and_ordinary_values_pass():
    refuse_secrets(
        [
            "teacher.api_key_env=OPENAI_API_KEY",
            "judge.api_key_env=A,B",
            "data.path=/d/key-value-store.jsonl",
            "model.student.name_or_path=Qwen/Qwen2.5-7B-Instruct",
            "-m",
            "--cfg",
            "job",
            "seed=1",
        ]
    )
    with pytest.raises(GADError, match="judge.api_key_env must be the NAME") as err:
        refuse_secrets(["judge.api_key_env=key-1234"])
    assert "key-1234" not in str(err.value)
