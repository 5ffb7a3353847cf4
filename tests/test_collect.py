"""`python src/collect.py` against a real chat-completions server on 127.0.0.1 with injected faults.

Most tests call `collect(cfg)` on the composed real config in this process (fast); the
exactly-once-after-SIGKILL and the secret tests run the real entry script in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from chat_server import REFUSAL_TEXT, ChatServer, reply_for
from conftest import ROOT, sigkill_once_grown
from hydra import compose, initialize_config_dir

from gad.errors import GADError
from gad.teacher_data.collect import DEFAULT_REFUSAL_PATTERNS, EXIT_MISSING, RefusalDetector, collect

SENTINEL = "sk-test-SENTINEL-7f3c9a1e5b"
FAST = [
    "teacher.timeout_s=0.4",
    "teacher.max_retries=2",
    "teacher.backoff_initial_s=0.01",
    "teacher.backoff_max_s=0.05",
    "progress=false",
    "fsync_interval_s=0",
]


def write_prompts(path: Path, names: list[str]) -> Path:
    with open(path, "w") as fh:
        for name in names:
            fh.write(
                json.dumps(
                    {
                        "id": name,
                        "messages": [{"role": "user", "content": f"{name}: please answer"}],
                        "meta": {"n": name},
                    }
                )
                + "\n"
            )
    return path


def cfg_for(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("collect", overrides=list(overrides))


def run_collect(server: ChatServer, prompts: Path, output: Path, *extra: str) -> int:
    cfg = cfg_for(
        f"prompts={prompts}",
        f"output={output}",
        f"teacher.base_url={server.base_url}",
        "teacher.concurrency=8",
        *FAST,
        *extra,
    )
    return collect(cfg)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def grep_tree(root: Path, needle: str) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and needle.encode() in path.read_bytes():
            hits.append(str(path))
    return hits


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)


FAULTS = {
    "q-r429": ["429", "429"],  # rate limited twice (Retry-After 50 ms), then answered
    "q-r500": ["500"],  # server error, retried, answered
    "q-slow": ["slow"],  # past the 0.4 s timeout, retried, answered
    "q-drop": ["drop"],  # connection dropped without a reply, retried, answered
    "q-malformed": ["malformed"],  # 200 that is not JSON: failed this run, answered by the re-run
    "q-empty": ["empty"],  # empty content: failed this run, answered by the re-run
    "q-refuse": ["refuse"] * 9,  # a refusal: rejected, never re-sent
    "q-filter": ["content_filter"] * 9,  # content filter stop: rejected
    "q-length": ["length"] * 9,  # cut by max_tokens: rejected as truncated
    "q-bad": ["400"] * 9,  # invalid request: rejected
    "q-down": ["503"] * 99,  # never recovers: failed after max_retries, each run
}


def test_every_fault_is_retried_or_recorded_and_a_rerun_sends_only_what_is_missing(tmp_path, capsys):
    names = [f"p-{i:03d}" for i in range(30)] + list(FAULTS)
    prompts = write_prompts(tmp_path / "prompts.jsonl", names)
    out = tmp_path / "out.jsonl"
    side = tmp_path / "out.jsonl.failures"
    with ChatServer(script=FAULTS, retry_after_ms=50, slow_s=1.0) as server:
        assert run_collect(server, prompts, out) == EXIT_MISSING

        answered = {r["id"]: r for r in read(out)}
        assert set(answered) == {f"p-{i:03d}" for i in range(30)} | {"q-r429", "q-r500", "q-slow", "q-drop"}
        for rid, rec in answered.items():
            assert rec["response"] == reply_for(rec["messages"]) and rec["teacher"] == "gpt-5-chat-latest"
            assert rec["meta"]["n"] == rid and rec["meta"]["finish_reason"] == "stop"
        failures = {r["id"]: r for r in read(side)}
        assert {k: (v["status"], v["reason"]) for k, v in failures.items()} == {
            "q-malformed": ("failed", "malformed"),
            "q-empty": ("failed", "empty"),
            "q-refuse": ("rejected", "refusal"),
            "q-filter": ("rejected", "content_filter"),
            "q-length": ("rejected", "truncated"),
            "q-bad": ("rejected", "invalid_request"),
            "q-down": ("failed", "server_error"),
        }
        assert failures["q-refuse"]["response"] == REFUSAL_TEXT  # kept for inspection, with the prompt
        assert failures["q-refuse"]["messages"][0]["content"].startswith("q-refuse")
        assert failures["q-down"]["attempts"] == 3 and len(server.requests_for("q-down")) == 3  # bounded
        assert "maximum context length" in failures["q-bad"]["detail"]

        # Retry-After honoured: 50 ms between the attempts of the rate-limited prompt
        times = [r.time for r in server.requests_for("q-r429")]
        assert len(times) == 3 and min(b - a for a, b in zip(times, times[1:])) >= 0.045
        assert len(server.requests_for("q-slow")) == 2 and len(server.requests_for("q-drop")) == 2

        # the re-run sends exactly the failed prompts, not the answered or rejected ones
        before = len(server.requests)
        assert run_collect(server, prompts, out) == EXIT_MISSING  # q-down is still down
        resent = sorted({r.text.split(":")[0] for r in server.requests[before:]})
        assert resent == ["q-down", "q-empty", "q-malformed"]
        ids = [r["id"] for r in read(out)]
        assert len(ids) == len(set(ids)) == 36  # + q-malformed, q-empty; nothing twice
        failures = {r["id"]: r["reason"] for r in read(side)}  # compacted: only what is still true
        assert failures == {
            "q-refuse": "refusal",
            "q-filter": "content_filter",
            "q-length": "truncated",
            "q-bad": "invalid_request",
            "q-down": "server_error",
        }

        # asked to, a re-run also re-sends the rejected ones; keep_truncated keeps cut answers
        before = len(server.requests)
        assert run_collect(server, prompts, out, "retry_rejected=true", "keep_truncated=true") == EXIT_MISSING
        resent = sorted({r.text.split(":")[0] for r in server.requests[before:]})
        assert resent == ["q-bad", "q-down", "q-filter", "q-length", "q-refuse"]
        truncated = [r for r in read(out) if r["id"] == "q-length"]
        assert len(truncated) == 1 and truncated[0]["meta"]["finish_reason"] == "length"
    assert all(r.authorization == f"Bearer {SENTINEL}" for r in server.requests)  # the key was used...
    printed = capsys.readouterr()
    assert "collect summary" in printed.out and "still missing" in printed.out
    assert grep_tree(tmp_path, SENTINEL) == [] and SENTINEL not in printed.out + printed.err  # ...and never written


def test_collected_dump_is_a_valid_training_dump_with_usage_and_system_prompt(tmp_path, capsys):
    from gad.data.records import read_records

    prompts = write_prompts(tmp_path / "prompts.jsonl", [f"p-{i}" for i in range(10)])
    out = tmp_path / "out.jsonl"
    with ChatServer() as server:
        assert (
            run_collect(
                server,
                prompts,
                out,
                "teacher.system_prompt=Be brief.",
                "teacher.temperature=0.3",
                "teacher.max_tokens=64",
            )
            == 0
        )
        sent = server.requests[0]
        capsys.readouterr()
        # same output, another teacher: its answers join the first's (one record per (prompt, teacher))
        assert run_collect(server, prompts, out, "teacher.model=another-teacher") == 0
        assert len(server.requests) == 20
        assert "also holds answers from other teachers (gpt-5-chat-latest: 10)" in " ".join(
            capsys.readouterr().out.split()
        )
        assert run_collect(server, prompts, out, "teacher.model=another-teacher") == 0  # done: nothing re-sent
        assert len(server.requests) == 20
    records, report = read_records(out)
    assert report.kept == 20 and all(r["messages"][0]["role"] == "user" for r in records)  # the prompt as given...
    assert sorted((r["id"], r["teacher"]) for r in records) == sorted(
        (f"p-{i}", t) for i in range(10) for t in ("gpt-5-chat-latest", "another-teacher")
    )
    records = [r for r in records if r["teacher"] == "gpt-5-chat-latest"]
    assert all(r["meta"]["system_prompt"] == "Be brief." for r in records)  # ...and the system prompt sent (gad.chat)
    assert all(r["meta"]["usage"]["completion_tokens"] > 0 for r in records)
    assert sent.authorization == f"Bearer {SENTINEL}"


def test_request_carries_the_sampling_parameters(tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", ["only"])
    with ChatServer() as server:
        run_collect(
            server,
            prompts,
            tmp_path / "o.jsonl",
            "teacher.temperature=0.3",
            "teacher.top_p=0.9",
            "teacher.max_tokens=77",
            "teacher.seed=5",
            "+teacher.extra_body.top_k=20",
            "teacher.system_prompt=S",
        )
    body = server.requests[0].body
    assert body["model"] == "gpt-5-chat-latest" and body["temperature"] == 0.3 and body["top_p"] == 0.9
    assert body["max_completion_tokens"] == 77 and body["seed"] == 5 and body["top_k"] == 20
    assert body["messages"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "only: please answer"}]


def test_exhausted_quota_stops_the_run_at_once_and_a_rerun_finishes(tmp_path):
    names = [f"p-{i:03d}" for i in range(60)]
    prompts = write_prompts(tmp_path / "prompts.jsonl", names)
    out = tmp_path / "out.jsonl"
    with ChatServer(latency=0.01, script={"p-020": ["quota"]}) as server:
        with pytest.raises(GADError, match="quota exhausted") as err:
            run_collect(server, prompts, out, "teacher.concurrency=4")
        assert "\n" not in str(err.value) and "re-run" in str(err.value)
        assert len(server.requests_for("p-020")) == 1  # an exhausted quota is never retried
        assert len(server.requests) < 40  # stopped at once, not after every prompt
        first = [r["id"] for r in read(out)]
        assert 0 < len(first) < 60
        assert run_collect(server, prompts, out, "teacher.concurrency=4") == 0
    ids = [r["id"] for r in read(out)]
    assert sorted(ids) == names and ids[: len(first)] == first


def test_rejected_key_stops_the_run_and_never_shows_the_key(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl", [f"p-{i}" for i in range(30)])
    with ChatServer(api_key="the-right-key") as server:
        with pytest.raises(GADError) as err:
            run_collect(server, prompts, tmp_path / "out.jsonl", "teacher.concurrency=2")
        assert len(server.requests) <= 3
    message = str(err.value)
    assert "rejected the API key" in message and "401" in message
    assert server.requests[0].authorization == f"Bearer {SENTINEL}"  # the server echoed it back in its error
    captured = capsys.readouterr()
    assert SENTINEL not in message + captured.out + captured.err
    assert read(tmp_path / "out.jsonl") == []


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["prompts=???"], "prompts: required, but not set"),
        (["output=???"], "output: required, but not set"),
        (["teacher.concurrency=0"], "teacher.concurrency=0 is invalid: must be >= 1"),
        (["teacher.temperature=-0.5"], "teacher.temperature=-0.5 is invalid: must be >= 0"),
        (["teacher.top_p=0"], "teacher.top_p=0 is invalid: must be > 0"),
        (["teacher.max_retries=-1"], "teacher.max_retries=-1 is invalid: must be >= 0"),
        (
            ["teacher.base_url=ftp://example.org"],
            "teacher.base_url=ftp://example.org is invalid: must be an http(s) URL",
        ),
        (["prompts=/no/such/prompts.jsonl"], "prompts=/no/such/prompts.jsonl is invalid: no such file or folder"),
        (["output=out.txt"], "output=out.txt is invalid: must be a .jsonl file"),
        (
            ["teacher.api_key_env=sk-live-abcdef0123456789"],
            "teacher.api_key_env: must be the NAME of an environment variable",
        ),
        (["teacher.api_key_env=GAD_TEST_UNSET_KEY"], "environment variable GAD_TEST_UNSET_KEY is not set"),
    ],
)
def test_bad_config_fails_early_with_one_line_naming_the_key(tmp_path, overrides, fragment):
    prompts = write_prompts(tmp_path / "p.jsonl", ["a"])
    cfg = cfg_for(
        f"prompts={prompts}", f"output={tmp_path / 'o.jsonl'}", "teacher.base_url=http://127.0.0.1:9/v1", *overrides
    )
    with pytest.raises(GADError) as err:
        collect(cfg)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert "sk-live-abcdef0123456789" not in str(err.value)
    assert not (tmp_path / "o.jsonl").exists()  # nothing sent, nothing written


def test_keyless_local_server_needs_no_key(tmp_path, monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    prompts = write_prompts(tmp_path / "p.jsonl", ["a", "b"])
    with ChatServer() as server:
        cfg = cfg_for(
            "teacher=vllm",
            f"prompts={prompts}",
            f"output={tmp_path / 'o.jsonl'}",
            f"teacher.base_url={server.base_url}",
            *FAST,
        )
        assert collect(cfg) == 0
        assert server.requests[0].authorization == "Bearer EMPTY"
    assert {r["teacher"] for r in read(tmp_path / "o.jsonl")} == {"Qwen/Qwen2.5-72B-Instruct"}


def test_httpx_backend_retries_the_same_faults(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ["a-429", "b-drop", "c-slow", "d-ok"])
    with ChatServer(script={"a-429": ["429"], "b-drop": ["drop"], "c-slow": ["slow"]}, slow_s=1.0) as server:
        assert run_collect(server, prompts, tmp_path / "o.jsonl", "teacher.http_backend=httpx") == 0
        assert [len(server.requests_for(k)) for k in ("a-429", "b-drop", "c-slow", "d-ok")] == [2, 2, 2, 1]


@pytest.mark.parametrize(
    "text, refused",
    [
        ("I'm sorry, but I can't help with that request.", True),
        ("I\u2019m sorry, but I cannot assist with creating malware.", True),
        ("Sorry, I can't do that.", True),
        ("I can't help with that.", True),
        ("**I cannot provide** that.", True),  # markdown emphasis is skipped
        ("I can't help but notice the pattern here: ...", False),
        ("I'm sorry to hear that! Here are a few things that might help: ...", False),
        ("As an AI language model, I don't have opinions, but here are the arguments: ...", False),
        ("Sure! Here is the answer. I'm sorry, but I can't stress enough...", False),  # only the start counts
    ],
)
def test_refusal_patterns(text, refused):
    assert RefusalDetector(list(DEFAULT_REFUSAL_PATTERNS))(text) is refused


# ----------------------------------------------------------------------------- real entry script
def test_sigkill_mid_run_then_rerun_gives_exactly_one_record_per_prompt(tmp_path):
    """The real script, killed with SIGKILL mid-run and re-run: one record per prompt, only the
    missing ones re-sent, a torn last line repaired; and the key is in no file it wrote."""
    names = [f"p-{i:04d}" for i in range(400)]
    prompts = write_prompts(tmp_path / "prompts.jsonl", names)
    out = tmp_path / "out.jsonl"
    args = [
        sys.executable,
        str(ROOT / "src" / "collect.py"),
        f"prompts={prompts}",
        f"output={out}",
        "teacher.concurrency=16",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        "progress=false",
        "fsync_interval_s=0",
    ]
    env = {**os.environ, "OPENAI_API_KEY": SENTINEL, "HF_HUB_OFFLINE": "1"}
    with ChatServer(latency=0.05) as server:
        proc = subprocess.Popen(
            [*args, f"teacher.base_url={server.base_url}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sigkill_once_grown(proc, out, 40 * 150)  # some records in: kill it mid-run
        raw = out.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1].count(b"\n")
        assert 0 < complete < 400
        sent_before = len(server.requests)

        rerun = subprocess.run(
            [*args, f"teacher.base_url={server.base_url}"], env=env, capture_output=True, text=True, timeout=120
        )
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert len(server.requests) - sent_before == 400 - complete  # only what was missing was sent
    ids = [r["id"] for r in read(out)]
    assert sorted(ids) == names  # exactly one record per prompt
    if not raw.endswith(b"\n"):
        assert "repaired a torn last line" in rerun.stdout
    assert "collect summary" in rerun.stdout
    assert all(r.authorization == f"Bearer {SENTINEL}" for r in server.requests)
    assert "api_key_env: OPENAI_API_KEY" in (tmp_path / "hydra" / ".hydra" / "config.yaml").read_text()
    assert grep_tree(tmp_path, SENTINEL) == []  # records, sidecar, saved config and overrides, logs
    assert SENTINEL not in rerun.stdout + rerun.stderr


def test_the_sidecar_never_loads_as_training_data_and_an_earlier_versions_sidecar_is_kept(tmp_path, capsys):
    from gad.data.records import read_records

    names = [f"p-{i}" for i in range(6)]
    prompts = write_prompts(tmp_path / "prompts.jsonl", [*names, "q-refuse"])
    data = tmp_path / "data"
    data.mkdir()
    out = data / "out.jsonl"
    with ChatServer(script={"q-refuse": ["refuse"] * 9}) as server:
        assert run_collect(server, prompts, out) == 0
        assert [r["id"] for r in read(data / "out.jsonl.failures")] == ["q-refuse"]
        # data.path=<the folder>: the refusal is not a training row; the sidecar is counted as skipped
        records, report = read_records(data)
        assert sorted(r["id"] for r in records) == names and report.files_skipped == {"collect sidecars": 1}
        with pytest.raises(GADError, match="a collect.py sidecar"):
            read_records(data / "out.jsonl.failures")
        # an earlier version's <stem>.failures.jsonl: adopted, so the rejected prompt is still not re-sent
        (data / "out.jsonl.failures").rename(data / "out.failures.jsonl")
        before = len(server.requests)
        assert run_collect(server, prompts, out) == 0
        assert len(server.requests) == before and not (data / "out.failures.jsonl").exists()
        assert [r["id"] for r in read(data / "out.jsonl.failures")] == ["q-refuse"]
        with pytest.raises(GADError, match="failures=.*use a name ending in .failures"):
            run_collect(server, prompts, out, f"failures={data / 'rejected.jsonl'}")


def test_a_full_disk_while_collecting_is_one_line_naming_the_file_and_nothing_is_lost(tmp_path, monkeypatch):
    import errno

    import gad.api.journal as journal

    names = [f"p-{i:02d}" for i in range(20)]
    prompts = write_prompts(tmp_path / "prompts.jsonl", names)
    out = tmp_path / "out.jsonl"
    real_write, written = os.write, []

    def full_after_five(fd, data):  # the disk fills up after five records of the output
        if os.readlink(f"/proc/self/fd/{fd}") == str(out):
            written.append(fd)
            if len(written) == 6:
                return real_write(fd, bytes(data)[:7])  # a short write: the last few bytes that fitted
            if len(written) > 6:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    with ChatServer() as server:
        monkeypatch.setattr(journal.os, "write", full_after_five)
        with pytest.raises(GADError) as err:
            run_collect(server, prompts, out, "teacher.concurrency=2")
        monkeypatch.setattr(journal.os, "write", real_write)
        message = str(err.value)
        assert "\n" not in message and str(out) in message and "No space left on device" in message
        kept = read(out)  # whole lines only: the cut line was removed again
        assert len(kept) == 5 and out.read_text().endswith("\n")
        assert run_collect(server, prompts, out, "teacher.concurrency=2") == 0
    ids = [r["id"] for r in read(out)]
    assert sorted(ids) == names and ids[:5] == [r["id"] for r in kept]
