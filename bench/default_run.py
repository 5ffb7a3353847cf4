"""The README's quick-start run, `python src/train.py`, as a user sees it piped, and how long it takes.

    python bench/default_run.py           # runs it, prints its output and the wall time
    python bench/default_run.py --write   # also writes docs/measured/default_run.md

Runs `python src/train.py` (no overrides but a temporary `paths.log_dir`, so no outputs/ folder is left
behind) in a subprocess with stdout and stderr merged and not a terminal (so no progress bar), passes its
output through as it comes, then prints the wall time measured around the subprocess.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from measured import ROOT, add_write_option, record

RUN = ["python", "src/train.py"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_write_option(parser, "default_run")
    args = parser.parse_args()
    with record("The default run: python src/train.py", "default_run", write=args.write) as rec:
        with tempfile.TemporaryDirectory(prefix="gad-default-run-") as log_dir:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # stdout and stderr in the order they were written
            cmd = [sys.executable, *RUN[1:], f"paths.log_dir={log_dir}"]
            print(f"$ {' '.join(RUN)}", flush=True)
            start = time.perf_counter()
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
            )
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
            code = proc.wait()
            seconds = time.perf_counter() - start
        if code != 0:
            sys.exit(f"error: {' '.join(RUN)} exited with status {code}")
        print(f"wall time: {seconds:.1f} s (measured around the `{' '.join(RUN)}` process)")
        rec.fact("the run", f"`{' '.join(RUN)}` with `paths.log_dir` in a temporary folder; stdout and stderr piped")
        rec.fact("wall time", f"{seconds:.1f} s")


if __name__ == "__main__":
    main()
