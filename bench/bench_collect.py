"""Throughput of the collector: requests per second against a loopback server with fixed latency.

    python bench/bench_collect.py --latency 0.05 --concurrency 64 --requests 2000

Starts tests/chat_server.py in its own process (fixed latency L per reply, TCP_NODELAY, keep-alive)
and runs the collector's real per-prompt work (`gad.teacher_data.collect.make_work`: request, parse,
refusal check, canonical record) through `gad.api.run_journaled` with durable journals in a
temporary folder, at concurrency C. With no client overhead the rate would be C/L requests per
second; the script prints the achieved rate, that ideal and their ratio, and the client's CPU
time per request (the ceiling on one process: about 1/(CPU per request) requests per second).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from measured import add_write_option, record  # noqa: E402


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.05, help="server latency L per request, seconds")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight C")
    parser.add_argument("--requests", type=int, default=2000, help="number of prompts (>= 1000 for the target)")
    parser.add_argument("--http-backend", default="aiohttp", choices=["aiohttp", "httpx"])
    parser.add_argument(
        "--warmup", type=int, default=200, help="requests sent first and not timed (connections, imports)"
    )
    add_write_option(parser, "collect")
    args = parser.parse_args(argv)
    with record("Throughput of the collector against a loopback server", "collect", write=args.write) as rec:
        rec.fact("device used", "none (HTTP client and a loopback server, one process each)")
        return measure(args)


def measure(args) -> float:
    """Runs the server and the collector; prints the rate; returns achieved / ideal."""
    from gad.api import Journal, make_client, run_journaled
    from gad.teacher_data.collect import CollectPlan, RefusalConfig, TeacherConfig, make_work

    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "chat_server.py"), "--latency", str(args.latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = server.stdout.readline().strip()
        settings = TeacherConfig(  # conf/teacher/vllm.yaml's keys, at the loopback server
            base_url=base_url,
            api_key_env="VLLM_API_KEY",
            require_api_key=False,
            timeout_s=600,
            connect_timeout_s=10,
            max_retries=2,
            backoff_initial_s=1.0,
            backoff_max_s=30,
            http_backend=args.http_backend,
            model="bench",
            concurrency=args.concurrency,
            temperature=0.7,
            top_p=None,
            max_tokens=512,
            max_tokens_field="max_tokens",
            seed=None,
            system_prompt=None,
            extra_body={},
            price_in_per_mtok=None,
            price_out_per_mtok=None,
        )
        with tempfile.TemporaryDirectory() as tmp:
            plan = CollectPlan(
                prompts=tmp,  # not read: the prompts are made below
                system_prompt=None,
                system_prompt_tokenizer=None,
                prompts_split="train",
                limit=None,
                output=str(Path(tmp) / "out.jsonl"),
                failures=str(Path(tmp) / "out.jsonl.failures"),
                retry_rejected=False,
                keep_truncated=False,
                refusal=RefusalConfig(enabled=True, scan_chars=300, patterns=[r"^I'm sorry"]),
                abort_after_failures=0,
                fsync_interval_s=1.0,
                progress=False,
                teacher=settings,
            )

            def prompts(tag: str, n: int):
                return [
                    {
                        "id": f"{tag}-{i:06d}",
                        "messages": [{"role": "user", "content": f"Question {i}: explain something in a few words."}],
                    }
                    for i in range(n)
                ]

            async def go() -> tuple[float, float, int]:
                client = make_client(settings, "EMPTY", concurrency=args.concurrency)
                work = make_work(plan, client, [])
                try:
                    with Journal(plan.output_path, fsync_interval_s=1.0) as out, Journal(plan.failures_path) as side:
                        await run_journaled(
                            prompts("warm", args.warmup),
                            work,
                            output=out,
                            failures=side,
                            concurrency=args.concurrency,
                            progress=False,
                        )
                        cpu0, t0 = time.process_time(), time.monotonic()
                        stats = await run_journaled(
                            prompts("bench", args.requests),
                            work,
                            output=out,
                            failures=side,
                            concurrency=args.concurrency,
                            progress=False,
                        )
                        return time.monotonic() - t0, time.process_time() - cpu0, stats.ok
                finally:
                    await client.close()

            wall, cpu, ok = asyncio.run(go())
    finally:
        server.terminate()
        server.wait()
    achieved = args.requests / wall
    ideal = args.concurrency / args.latency
    ratio = achieved / ideal
    print(
        json.dumps(
            {
                "requests": args.requests,
                "ok": ok,
                "latency_s": args.latency,
                "concurrency": args.concurrency,
                "http_backend": args.http_backend,
                "cpus": os.cpu_count(),
            }
        )
    )
    print(
        f"achieved {achieved:.1f} req/s | ideal C/L = {ideal:.1f} req/s | ratio {ratio:.3f} | "
        f"wall {wall:.2f} s | client CPU {1000 * cpu / args.requests:.2f} ms/request"
    )
    return ratio


if __name__ == "__main__":
    main()
