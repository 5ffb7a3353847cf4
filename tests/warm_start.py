"""Entry scripts started from a warm interpreter, for the suite's many runs of `src/train.py` and `src/eval.py`.

A toy run spends most of its time importing torch, transformers, lightning and hydra (`time python -c "import
torch, transformers, lightning.pytorch, hydra"`: 5 to 6 s on a 2-core machine like CI's). A server
process per test worker imports them once and forks a child per run; the child runs the script as
`python src/<script> <args>` would: as `__main__`, with its own argv, `sys.path[0]`, environment,
working directory, stdin, stdout and stderr, and it ends through the interpreter's own shutdown (atexit
handlers run; an uncaught exception prints its traceback and exits 1; the exit status is the script's).

The server imports as train.py and eval.py do: after `gad.cli.start` has set TQDM_DISABLE (tqdm reads it on
import; gad.console.quiet_raw_bars). What a fork cannot reproduce stays a plain subprocess (`WarmStarter.run`
returns None, `run_entry` falls back):
- another script (collect.py and prepare.py import their libraries with tqdm's bars on), or a `verbose=` run;
- a call whose environment differs from the server's once its imports ran (PYTHONPATH, HF_* and other
  variables are read at import; the libraries also set a few, as they do in the test process);
- every call, if the server's imports printed anything or left a second thread running (forking a
  threaded process is unsafe): datasets and pyarrow are not preloaded for that reason (pyarrow starts
  jemalloc's background thread), nor the project's own modules, which import them.
tests/test_console.py's run, which checks what a user's terminal shows, is always a plain subprocess.
"""

from __future__ import annotations

import json
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# What every entry script imports, and nothing that starts a thread (see above).
PRELOAD = ("torch", "transformers", "lightning.pytorch", "hydra", "omegaconf")
# Variables set while the tests run that no preloaded library reads as it loads: pytest's current test; the seed
# Lightning's seed_everything (called by in-process tests) records for its own later reads; and what sklearn and
# joblib set on import (in-process evaluation tests import them) for Intel's OpenMP, which none of them loads.
NOT_COMPARED = {
    "PYTEST_CURRENT_TEST",
    "PL_GLOBAL_SEED",
    "PL_SEED_WORKERS",
    "KMP_DUPLICATE_LIB_OK",
    "KMP_INIT_AT_FORK",
}


# ------------------------------------------------------------------------------------------- server side
def serve(fd: int) -> None:
    """Preload, say whether forking is safe, then fork one child per request until the socket closes."""
    import importlib

    before = dict(os.environ)
    os.environ.setdefault("TQDM_DISABLE", "1")  # as gad.cli.start does for train.py and eval.py, before their imports
    for name in PRELOAD:
        importlib.import_module(name)
    # What the imports set (lightning: PYTORCH_NVML_BASED_CUDA_CHECK, ...): a fresh interpreter would set it too.
    # (TQDM_DISABLE among it: the entry scripts set it before their own imports.)
    set_by_imports = {k: v for k, v in os.environ.items() if before.get(k) != v}
    threads = os.listdir("/proc/self/task")
    sock = socket.socket(fileno=fd)

    def send(message: dict) -> None:
        sock.sendall(json.dumps(message).encode() + b"\n")

    send({"threads": len(threads), "env": before, "set_by_imports": set_by_imports})
    requests = sock.makefile("rb")
    for line in requests:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            requests.close()
            sock.close()
            run_script(request, set_by_imports)
            raise SystemExit(0)  # the script returned: exit as a script that ends does
        send({"pid": pid})
        _, status = os.waitpid(pid, 0)
        send({"returncode": os.waitstatus_to_exitcode(status)})


def run_script(request: dict, set_by_imports: dict[str, str]) -> None:
    """In the forked child: become `python <script> <args>` and run it (SystemExit and errors propagate)."""
    for fd, path, flags in (
        (0, request["stdin"] or os.devnull, os.O_RDONLY),
        (1, request["stdout"], os.O_WRONLY),
        (2, request["stderr"], os.O_WRONLY),
    ):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update({**set_by_imports, **request["env"]})  # as after a fresh interpreter's imports
    script = request["script"]
    sys.argv = [script, *request["args"]]
    sys.path[0] = os.path.dirname(script)
    runpy.run_path(script, run_name="__main__")


# ------------------------------------------------------------------------------------------- client side
class WarmStarter:
    """A warm server for this process: `start` it (it imports in the background), `run` scripts, `close` it."""

    def __init__(self, cwd: Path, scripts: tuple[str, ...] = ("train.py", "eval.py")):
        self.cwd, self.scripts = cwd, scripts  # the scripts it runs (file names)
        self.server: subprocess.Popen | None = None
        self.server_env: dict[str, str] | None = None  # the environment it started in
        self.set_by_imports: dict[str, str] = {}  # and what its imports set in it
        self.unfit: str | None = None  # why this process's calls all go to plain subprocesses
        self.lock = threading.Lock()

    def start(self, env: dict[str, str]) -> None:
        ours, theirs = socket.socketpair()
        self.log = tempfile.NamedTemporaryFile(prefix="warm-start-", suffix=".log", delete=False)
        self.server = subprocess.Popen(
            [sys.executable, __file__, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            env=env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )
        theirs.close()
        self.sock, self.received = ours, b""

    def _ready(self) -> bool:
        """Whether the server can serve: its imports done, silent, and no thread but its own."""
        if self.server_env is None and self.unfit is None:
            hello = self._read(timeout=120)
            self.server_env, self.set_by_imports = hello["env"], hello["set_by_imports"]
            printed = Path(self.log.name).read_text()
            if printed or hello["threads"] != 1:
                self.unfit = f"its imports printed {printed!r} and left {hello['threads']} threads running"
        return self.unfit is None

    def _send(self, message: dict) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def _read(self, timeout: float) -> dict:
        """The server's next message; TimeoutError after `timeout` s without one."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.received:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise TimeoutError
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise RuntimeError(f"the warm server ended: {Path(self.log.name).read_text()[-2000:]}")
            self.received += chunk
        line, _, self.received = self.received.partition(b"\n")
        return json.loads(line)

    def run(
        self, script: Path, args: list[str], *, env: dict[str, str], cwd: Path, timeout: float, input: str | None
    ) -> subprocess.CompletedProcess | None:
        """`subprocess.run([python, script, *args], capture_output=True, text=True, ...)` from the warm server,
        or None where that would not be the same (another script, `verbose=`, another environment; a busy or
        unfit server)."""
        verbose = any(arg.lstrip("+~").startswith("verbose=") for arg in args)  # tqdm's bars on: imported otherwise
        if script.name not in self.scripts or verbose or self.server is None or not self.lock.acquire(blocking=False):
            return None
        try:
            if not self._ready():
                return None
            if self._differs(env):
                return None
            return self._run(script, args, env=env, cwd=cwd, timeout=timeout, input=input)
        finally:
            self.lock.release()

    def _differs(self, env: dict[str, str]) -> set[str]:
        """The variables a fresh interpreter started in `env` would see differently as it imports (none of
        NOT_COMPARED); a variable the imports set counts only where `env` sets it otherwise."""
        after_imports = {**self.server_env, **self.set_by_imports}
        wanted = {**self.set_by_imports, **env}
        differs = {k for k in wanted.keys() | after_imports.keys() if wanted.get(k) != after_imports.get(k)}
        differs -= NOT_COMPARED
        return differs

    def _run(self, script, args, *, env, cwd, timeout, input) -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(script), *args]
        with tempfile.TemporaryDirectory(prefix="warm-run-") as tmp:
            files = {name: Path(tmp) / name for name in ("stdin", "stdout", "stderr")}
            for path in files.values():
                path.write_text((input or "") if path.name == "stdin" else "")
            request = {
                "script": str(script),
                "args": list(args),
                "env": env,
                "cwd": str(cwd),
                "stdin": str(files["stdin"]) if input is not None else None,
                "stdout": str(files["stdout"]),
                "stderr": str(files["stderr"]),
            }
            self._send(request)
            pid = self._read(timeout=60)["pid"]
            try:
                returncode = self._read(timeout=timeout)["returncode"]
            except BaseException as stopped:  # the time limit, or Ctrl-C: the child goes too, as with subprocess.run
                os.kill(pid, signal.SIGKILL)
                self._read(timeout=60)
                if isinstance(stopped, TimeoutError):
                    out, err = (files[name].read_text() for name in ("stdout", "stderr"))
                    raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err) from None
                raise
            out, err = (files[name].read_text() for name in ("stdout", "stderr"))
        return subprocess.CompletedProcess(cmd, returncode, out, err)

    def close(self) -> None:
        if self.server is not None:
            self.sock.close()  # the server reads the end of its input and exits
            self.server.wait(timeout=60)
            os.unlink(self.log.name)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
