"""Regenerate docs/measured/: every generating command, one after the other, each with `--write`.

    python bench/regenerate_all.py                     # all of them, in the order below
    python bench/regenerate_all.py step trl            # only these (names of docs/measured/<name>.md)
    python bench/regenerate_all.py --max-load 1.5      # on a shared machine: wait for a quiet spell first

Timings move with whatever else the machine runs; `--max-load` waits, before each command, until the
1-minute load average is at most that (checking every minute, for up to `--max-wait` seconds, then runs
anyway). Each generated file records the load at its start.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from measured import ROOT

# name of docs/measured/<name>.md -> the command that writes it (run from the repository root)
COMMANDS = {
    "default_run": ["bench/default_run.py", "--write"],
    "padding": ["bench/bench_padding.py", "--write"],
    "step": ["bench/bench_step.py", "--write"],
    "trl": ["bench/bench_trl.py", "--write"],
    "checkpoint": ["bench/bench_checkpoint.py", "--write"],
    "collect": ["bench/bench_collect.py", "--write"],
    "toy_compare": ["bench/toy_compare.py", "--write"],  # 41 minutes on 2 cores when measured: every toy_compare sweep
}


def wait_for_load(max_load: float, max_wait: float) -> None:
    deadline = time.monotonic() + max_wait
    while os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        print(f"load {os.getloadavg()[0]:.2f} > {max_load}: waiting", file=sys.stderr, flush=True)
        time.sleep(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"files to regenerate, of: {', '.join(COMMANDS)} (default: all)")
    parser.add_argument("--max-load", type=float, default=None, help="wait for a 1-minute load average this low")
    parser.add_argument("--max-wait", type=float, default=600, help="seconds to wait for it, per command")
    args = parser.parse_args()
    unknown = [name for name in args.names if name not in COMMANDS]
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)} (known: {', '.join(COMMANDS)})")
    failed = []
    for name in args.names or COMMANDS:
        if args.max_load is not None:
            wait_for_load(args.max_load, args.max_wait)
        cmd = COMMANDS[name]
        print(f"$ python {' '.join(cmd)}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        code = subprocess.run([sys.executable, *cmd], cwd=ROOT, check=False).returncode
        print(f"({time.perf_counter() - start:.0f} s, exit status {code})", file=sys.stderr, flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        sys.exit(f"error: not regenerated: {', '.join(failed)}")


if __name__ == "__main__":
    main()
