"""The warm interpreter that runs the entry scripts in tests (tests/warm_start.py): a forked run is the script's
own run, as a fresh `python script.py` gives it, only without the imports' wait."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT, WARM, run_entry
from warm_start import WarmStarter

# Everything a script can see of how it was started, and everything a caller gets back from it.
PROBE = textwrap.dedent(
    """
    import atexit, os, sys
    print("preloaded:", "torch" in sys.modules)
    print("name:", __name__, "file:", __file__)
    print("argv:", sys.argv, "path0:", sys.path[0], "cwd:", os.getcwd())
    print("env:", os.environ.get("PROBE_VALUE"), os.environ.get("PYTEST_CURRENT_TEST") is not None)
    print("stdin:", sys.stdin.read())
    atexit.register(print, "atexit ran")
    print("to stderr", file=sys.stderr)
    mode = sys.argv[1]
    if mode == "raise":
        raise ValueError("boom")
    if mode == "sleep":
        print("pid:", os.getpid(), flush=True)
        import time; time.sleep(120)
    if mode == "exit":
        sys.exit(3)
    """
)


@pytest.fixture(scope="module")
def warm():
    starter = WarmStarter(cwd=ROOT, scripts=("probe.py",))
    starter.start({**os.environ, "PROBE_VALUE": "v"})
    yield starter
    starter.close()


def both(warm, script, *args, input=None, timeout=60):
    """The same call, warm and in a fresh interpreter."""
    env, cwd = {**os.environ, "PROBE_VALUE": "v"}, script.parent
    forked = warm.run(script, list(args), env=env, cwd=cwd, timeout=timeout, input=input)
    fresh = subprocess.run(
        [sys.executable, str(script), *args], env=env, cwd=cwd, capture_output=True, text=True, input=input
    )
    return forked, fresh


@pytest.mark.parametrize("mode, returncode", [("return", 0), ("exit", 3), ("raise", 1)])
def test_a_forked_run_is_the_scripts_own(warm, tmp_path, mode, returncode):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    forked, fresh = both(warm, script, mode, input="from stdin")
    assert forked is not None and warm.unfit is None
    assert forked.returncode == fresh.returncode == returncode
    assert forked.stdout.splitlines()[0] == "preloaded: True" and fresh.stdout.splitlines()[0] == "preloaded: False"
    assert forked.stdout.splitlines()[1:] == fresh.stdout.splitlines()[1:]
    assert "stdin: from stdin" in forked.stdout and forked.stdout.rstrip().endswith("atexit ran")
    if mode == "raise":  # the traceback ends as a fresh interpreter's does
        assert forked.stderr.splitlines()[-3:] == fresh.stderr.splitlines()[-3:]
        assert forked.stderr.splitlines()[-1] == "ValueError: boom"
    else:
        assert forked.stderr == fresh.stderr == "to stderr\n"


def test_the_time_limit_kills_the_forked_run(warm, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {**os.environ, "PROBE_VALUE": "v"}
    with pytest.raises(subprocess.TimeoutExpired) as stopped:
        warm.run(script, ["sleep"], env=env, cwd=tmp_path, timeout=3, input=None)
    pid = int(stopped.value.output.split("pid:")[1].split()[0])
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)
    again = warm.run(script, ["return"], env=env, cwd=tmp_path, timeout=60, input=None)
    assert again.returncode == 0  # the server goes on serving


def test_another_environment_is_left_to_a_plain_subprocess(warm, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {**os.environ, "PROBE_VALUE": "other"}  # a variable a library could read as it is imported
    assert warm.run(script, ["return"], env=env, cwd=tmp_path, timeout=60, input=None) is None


def test_the_suites_entry_runs_are_warm():
    proc = run_entry("train.py", "--cfg", "job")
    assert proc.returncode == 0 and "method:" in proc.stdout
    assert WARM.server is not None and WARM.unfit is None, WARM.unfit
    assert WARM.set_by_imports.get("TQDM_DISABLE") == "1"  # imported as train.py imports: with tqdm's bars off


def test_a_verbose_run_or_another_script_is_left_to_a_plain_subprocess(warm, tmp_path):
    script = tmp_path / "other.py"  # not one of the scripts this server runs
    script.write_text(PROBE)
    env = {**os.environ, "PROBE_VALUE": "v"}
    assert warm.run(script, ["return"], env=env, cwd=tmp_path, timeout=60, input=None) is None
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    assert warm.run(probe, ["return", "verbose=true"], env=env, cwd=tmp_path, timeout=60, input=None) is None
