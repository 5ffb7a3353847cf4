"""gad.api.journal and gad.api.runner: durable append, torn-line repair, locking, compaction,
exactly-once under SIGKILL, and the runner's concurrency bound against a real HTTP server."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from chat_server import ChatServer

from gad.api import ClientSettings, Journal, Outcome, chat_completion, make_client, pending_items, run_journaled
from gad.api.runner import FAILED, OK, REJECTED, FatalRunError
from gad.errors import GADError


def lines(path):
    return path.read_bytes().decode().splitlines()


def test_append_then_reopen_resumes_with_every_key(tmp_path):
    path = tmp_path / "out.jsonl"
    with Journal(path) as j:
        for i in range(5):
            j.append({"id": f"k{i}", "v": i})
        assert j.keys == {f"k{i}" for i in range(5)}
    with Journal(path) as j:
        assert len(j) == 5 and j.repaired_bytes == 0 and j.duplicates == 0
    assert [json.loads(x)["v"] for x in lines(path)] == [0, 1, 2, 3, 4]


def test_torn_last_line_is_truncated_and_appending_continues(tmp_path):
    path = tmp_path / "out.jsonl"
    good = "".join(json.dumps({"id": f"k{i}"}) + "\n" for i in range(3))
    path.write_text(good + '{"id": "k3", "response": "half a rec')
    with Journal(path) as j:
        assert j.keys == {"k0", "k1", "k2"}
        assert j.repaired_bytes == len('{"id": "k3", "response": "half a rec')
        j.append({"id": "k3", "response": "whole"})
    assert path.read_text() == good + json.dumps({"id": "k3", "response": "whole"}) + "\n"


def test_damaged_final_line_is_repaired_but_a_damaged_middle_line_is_an_error(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id": "a"}\n\x00\x00\x00\n')  # a power cut can leave zeros in the last block
    with Journal(path) as j:
        assert j.keys == {"a"} and j.repaired_bytes == 4
    assert path.read_bytes() == b'{"id": "a"}\n'
    path.write_bytes(b'{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(GADError, match=r"out.jsonl line 2: corrupt record"):
        Journal(path).open()


def test_a_second_writer_is_refused(tmp_path):
    path = tmp_path / "out.jsonl"
    with Journal(path):
        with pytest.raises(GADError, match="already in use"):
            Journal(path).open()
    Journal(path).open().close()  # released on close


def test_compact_keeps_the_last_record_per_key_and_the_lock(tmp_path):
    path = tmp_path / "side.jsonl"
    with Journal(path, index_fields=("status",)) as j:
        j.append({"id": "a", "status": "failed"})
        j.append({"id": "b", "status": "rejected"})
        j.append({"id": "a", "status": "rejected"})
        j.append({"id": "c", "status": "failed"})
        assert j.duplicates == 1
        assert j.compact(lambda r: r["id"] != "c") == 2
        assert j.index == {"b": {"status": "rejected"}, "a": {"status": "rejected"}}
        with pytest.raises(GADError, match="already in use"):
            Journal(path).open()
        j.append({"id": "d", "status": "failed"})
    assert [json.loads(x)["id"] for x in lines(path)] == ["b", "a", "d"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


WRITER = textwrap.dedent(
    """
    import sys
    from gad.api import Journal
    with Journal(sys.argv[1], fsync_interval_s=0.0) as j:
        i = len(j)
        print(i, j.repaired_bytes, flush=True)
        while True:
            j.append({"id": f"r{i:06d}", "pad": "x" * (i % 5000)})  # lines up to 5 kB: kills land mid-write
            i += 1
    """
)


def test_sigkill_at_any_moment_loses_nothing_and_writes_nothing_twice(tmp_path):
    path = tmp_path / "kill.jsonl"
    repaired, ids = 0, []
    for round_ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        try:
            start, _ = proc.stdout.readline().split()
            assert int(start) == len(ids)  # resumes right after the last complete record
            time.sleep(0.05 + 0.04 * round_)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        with Journal(path) as j:  # what a resumed run sees
            repaired += j.repaired_bytes > 0
            ids = [json.loads(x)["id"] for x in lines(path)]
            assert ids == [f"r{i:06d}" for i in range(len(ids))] and len(j) == len(ids)
    assert len(ids) > 100


def test_pending_items_skips_answered_and_rejected(tmp_path):
    with Journal(tmp_path / "o.jsonl") as out, Journal(tmp_path / "f.jsonl", index_fields=("status",)) as side:
        out.append({"id": "a"})
        side.append({"id": "b", "status": REJECTED})
        side.append({"id": "c", "status": FAILED})
        items = [{"id": x} for x in "abcd"]
        assert [i["id"] for i in pending_items(items, out, side)] == ["c", "d"]
        assert [i["id"] for i in pending_items(items, out, side, retry_rejected=True)] == ["b", "c", "d"]


def _run(server, tmp_path, n, concurrency, work=None, **kw):
    async def go():
        settings = ClientSettings(
            base_url=server.base_url,
            api_key_env="OPENAI_API_KEY",
            require_api_key=True,
            timeout_s=300.0,
            connect_timeout_s=10.0,
            max_retries=0,
            backoff_initial_s=0.5,
            backoff_max_s=30.0,
            http_backend="aiohttp",
        )
        client = make_client(settings, "k", concurrency=concurrency)

        async def ask(item):
            reply = await chat_completion(client, model="m", messages=item["messages"])
            return Outcome(
                OK,
                {"id": item["id"], "response": reply.text},
                tokens_in=reply.prompt_tokens,
                tokens_out=reply.completion_tokens,
            )

        try:
            with Journal(tmp_path / "o.jsonl") as out, Journal(tmp_path / "f.jsonl") as side:
                items = [{"id": f"i{k}", "messages": [{"role": "user", "content": f"q {k}"}]} for k in range(n)]
                return await run_journaled(
                    items, work or ask, output=out, failures=side, concurrency=concurrency, progress=False, **kw
                )
        finally:
            await client.close()

    return asyncio.run(go())


def test_runner_keeps_exactly_concurrency_requests_in_flight(tmp_path):
    with ChatServer(latency=0.03) as server:
        stats = _run(server, tmp_path, n=120, concurrency=12)
    assert stats.ok == 120 and server.count == 120
    assert server.max_in_flight == 12
    assert stats.elapsed_s < 120 / 12 * 0.03 * 3  # about 10 rounds of 30 ms, not 120
    assert len(set(lines(tmp_path / "o.jsonl"))) == 120
    assert stats.tokens_in == 240


def test_runner_stops_after_failures_in_a_row(tmp_path):
    async def always_fails(item):
        await asyncio.sleep(0)
        return Outcome(FAILED, {"id": item["id"], "detail": "server down"}, "connection")

    with (
        ChatServer() as server,
        pytest.raises(FatalRunError, match=r"stopped after [56] failed requests in a row") as err,
    ):
        _run(server, tmp_path, n=50, concurrency=2, work=always_fails, abort_after_failures=5)
    assert "\n" not in str(err.value)
    assert 5 <= len(lines(tmp_path / "f.jsonl")) <= 6  # recorded as they failed, then stopped
