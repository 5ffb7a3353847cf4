"""`python src/collect.py teachers=[a,b]`: several teachers into one dump, each (prompt, teacher) pair exactly once.

Two real chat-completions servers on 127.0.0.1, each a teacher with its own preset (base_url, model, key
variable); the exactly-once test runs the real entry script, SIGKILLs it mid-run and re-runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from chat_server import ChatServer, reply_for
from conftest import ROOT, sigkill_once_grown
from omegaconf import OmegaConf
from test_collect import cfg_for, grep_tree, read, write_prompts

from gad.errors import GADError
from gad.teacher_data.collect import collect, plan_from_config

KEY_A, KEY_B = "sk-test-TEACHER-A-1f2e3d4c5b", "sk-test-TEACHER-B-9a8b7c6d5e"


def preset(path: Path, server: ChatServer, name: str, key_env: str) -> Path:
    """A teacher preset file: conf/teacher/vllm.yaml with this server's URL, model and key variable."""
    cfg = OmegaConf.load(ROOT / "conf" / "teacher" / "vllm.yaml")
    cfg.update(
        name=name,
        model=server.model,
        base_url=server.base_url,
        api_key_env=key_env,
        require_api_key=True,
        concurrency=8,
        timeout_s=5,
        max_retries=2,
        backoff_initial_s=0.01,
    )
    OmegaConf.save(cfg, path)
    return path


def styled(messages: list[dict]) -> str:
    return "B says: " + reply_for(messages)


def test_two_teachers_sigkilled_mid_run_and_resumed_write_each_pair_exactly_once(tmp_path, monkeypatch):
    names = [f"p-{i:04d}" for i in range(150)]
    prompts = write_prompts(tmp_path / "prompts.jsonl", names)
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "KEY_A": KEY_A, "KEY_B": KEY_B, "HF_HUB_OFFLINE": "1"}
    env.pop("OPENAI_API_KEY", None)
    with (
        ChatServer(latency=0.03, api_key=KEY_A, model="model-a") as a,
        ChatServer(latency=0.03, api_key=KEY_B, model="model-b", reply_fn=styled) as b,
    ):
        teachers = f"teachers=[{preset(tmp_path / 'a.yaml', a, 'alpha', 'KEY_A')},{preset(tmp_path / 'b.yaml', b, 'beta', 'KEY_B')}]"
        args = [
            sys.executable,
            str(ROOT / "src" / "collect.py"),
            f"prompts={prompts}",
            f"output={out}",
            teachers,
            f"hydra.run.dir={tmp_path / 'hydra'}",
            "progress=false",
            "fsync_interval_s=0",
        ]
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sigkill_once_grown(proc, out, 30 * 150)  # some records in: kill it mid-run
        raw = out.read_bytes()
        before = [json.loads(line) for line in raw[: raw.rfind(b"\n") + 1].splitlines()]
        assert 0 < len(before) < 300
        sent = {"alpha": len(a.requests), "beta": len(b.requests)}
        have = {t: sum(r["teacher"] == t for r in before) for t in sent}

        rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        # only the missing pairs were sent, each to its own teacher
        assert len(a.requests) - sent["alpha"] == 150 - have["alpha"]
        assert len(b.requests) - sent["beta"] == 150 - have["beta"]
        assert {r.body["model"] for r in a.requests} == {"model-a"} and {r.body["model"] for r in b.requests} == {
            "model-b"
        }
        assert all(r.authorization == f"Bearer {KEY_A}" for r in a.requests)
        assert all(r.authorization == f"Bearer {KEY_B}" for r in b.requests)
        # a third run (in this process: cheaper) has nothing left to send
        monkeypatch.setenv("KEY_A", KEY_A)
        monkeypatch.setenv("KEY_B", KEY_B)
        assert collect(cfg_for(*args[2:5], "progress=false")) == 0
        assert (len(a.requests), len(b.requests)) == (
            sent["alpha"] + 150 - have["alpha"],
            sent["beta"] + 150 - have["beta"],
        )
    records = read(out)
    assert sorted((r["id"], r["teacher"]) for r in records) == sorted((n, t) for n in names for t in ("alpha", "beta"))
    for r in records:  # each teacher's own answer style
        expected = reply_for(r["messages"])
        assert r["response"] == (expected if r["teacher"] == "alpha" else "B says: " + expected)
    assert "x 2 teachers = 300 pairs" in " ".join(rerun.stdout.split())
    for key in (KEY_A, KEY_B):
        assert grep_tree(tmp_path, key) == [] and key not in rerun.stdout + rerun.stderr


def test_teacher_entries_preset_names_files_and_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    prompts = write_prompts(tmp_path / "prompts.jsonl", ["p"])
    base = [f"prompts={prompts}", f"output={tmp_path / 'o.jsonl'}"]
    plan = plan_from_config(cfg_for(*base, "teachers=[openai,{preset:vllm,name:qwen,concurrency:3}]"))
    assert [(t.label, t.model, t.concurrency) for t in plan.endpoints] == [
        ("gpt-5-chat-latest", "gpt-5-chat-latest", 32),
        ("qwen", "Qwen/Qwen2.5-72B-Instruct", 3),
    ]
    one = plan_from_config(cfg_for(*base))  # no `teachers`: the `teacher` group alone, as before
    assert [t.label for t in one.endpoints] == ["gpt-5-chat-latest"]
    for entries, fragment in [
        ("teachers=[vllm,vllm]", "two entries write teacher 'Qwen/Qwen2.5-72B-Instruct'"),
        ("teachers=[nosuch]", "teachers[0]=nosuch is invalid: no such preset (known: openai, vllm)"),
        ("teachers=[openai,{preset:vllm,concurrency:0}]", "teachers[1].concurrency=0 is invalid: must be >= 1"),
        ("teachers=[{name:x}]", "teachers[0].preset: required"),
    ]:
        with pytest.raises(GADError) as err:
            plan_from_config(cfg_for(*base, entries))
        assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_missing_key_for_the_second_teacher_names_it(tmp_path, monkeypatch):
    monkeypatch.delenv("KEY_B", raising=False)
    monkeypatch.setenv("KEY_A", KEY_A)
    prompts = write_prompts(tmp_path / "prompts.jsonl", ["p"])
    with ChatServer(model="model-a") as a, ChatServer(model="model-b") as b:
        entries = f"teachers=[{preset(tmp_path / 'a.yaml', a, 'alpha', 'KEY_A')},{preset(tmp_path / 'b.yaml', b, 'beta', 'KEY_B')}]"
        with pytest.raises(GADError, match=r"environment variable KEY_B is not set"):
            collect(cfg_for(f"prompts={prompts}", f"output={tmp_path / 'o.jsonl'}", entries, "progress=false"))
        assert a.requests == [] and b.requests == []
