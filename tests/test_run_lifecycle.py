"""Every way a run ends leaves a resumable last.ckpt of its last completed step and an honest exit code
(SIGTERM, Ctrl-C, `trainer.max_steps`, a full disk), and a failed checkpoint write or export never destroys
the previous file or folder."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, ROOT, assert_one_line_error, run_entry, train
from hydra import compose, initialize_config_dir
from safetensors import SafetensorError

from gad.checkpoint_io import AtomicCheckpointIO, link_atomic
from gad.errors import GADError, out_of_space
from gad.fit import build_module

STEPS = 12  # 3 warm-up + 9 adversarial: long enough to be signalled mid-run
LONG = [
    *FAST,
    f"method.adversarial_steps={STEPS - 3}",
    "callbacks.rollout_samples.every_n_steps=1",
    "callbacks.step_checkpoint.every_n_steps=1000",
]  # no periodic save: only the stop can write last.ckpt


def weights(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def saved_step(run) -> int:
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return state["distill_state"]["completed_steps"]


def assert_same_weights(a: dict, b: dict) -> None:
    """Bit-exact on purpose: both runs ran on this machine, the same ops in the same order from the same state
    (rollouts seeded by step and rank), so any difference is a resume bug, not rounding."""
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return train(tmp_path_factory.mktemp("whole"), *LONG)


def signalled_run(log_dir, signum: int) -> tuple[subprocess.CompletedProcess, object]:
    """Start a run, send `signum` once its first step has been logged, and wait for it to end."""
    args = [f"paths.log_dir={log_dir}", f"paths.cache_dir={log_dir}/cache", *LONG]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "src" / "train.py"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not list(log_dir.glob("train/runs/*/rollouts.jsonl")):  # written at the end of step 1
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never logged a step"
        time.sleep(0.05)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=240)
    run = max((log_dir / "train" / "runs").iterdir())
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), run


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_run_exits_non_zero_and_resumes_to_the_same_weights(uninterrupted, tmp_path, signum):
    proc, run = signalled_run(tmp_path / "stopped", signum)
    assert proc.returncode == 128 + signum, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    step = saved_step(run)
    assert 1 <= step < STEPS  # stopped mid-run, with the step it was in completed and saved
    assert not (run / "student").exists()  # not mistaken for a finished run
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]  # no stray temporary file
    resumed = train(tmp_path / "resumed", *LONG, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    assert saved_step(resumed) == STEPS
    assert_same_weights(weights(uninterrupted), weights(resumed))


def test_max_steps_counts_method_steps_and_leaves_a_resumable_run(uninterrupted, tmp_path):
    first = train(tmp_path / "first", *LONG, "trainer.max_steps=5")
    assert saved_step(first) == 5  # five method (not optimizer) steps, and a checkpoint of them
    resumed = train(tmp_path / "resumed", *LONG, f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}")
    assert_same_weights(weights(uninterrupted), weights(resumed))


def failing_run(log_dir, *overrides: str) -> tuple[subprocess.CompletedProcess, object]:
    """A run with tests/raise_at_step.py's RaiseAtStep among its callbacks."""
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    args = [
        f"paths.log_dir={log_dir}",
        f"paths.cache_dir={log_dir}/cache",
        *LONG,
        "+callbacks.raise_at._target_=raise_at_step.RaiseAtStep",
        *overrides,
    ]
    proc = run_entry("train.py", *args, env=env)
    return proc, max((log_dir / "train" / "runs").iterdir())


def test_an_error_between_steps_saves_the_last_step_then_fails_with_its_traceback(uninterrupted, tmp_path):
    proc, run = failing_run(tmp_path / "failed", "+callbacks.raise_at.step=5")
    assert proc.returncode != 0 and "RuntimeError: planted failure after step 5" in proc.stderr
    assert saved_step(run) == 5
    resumed = train(tmp_path / "resumed", *LONG, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    assert_same_weights(weights(uninterrupted), weights(resumed))


def test_an_error_part_way_through_a_step_keeps_the_last_completed_save(tmp_path):
    # D has stepped, G has not: those weights belong to no step, and must not become last.ckpt
    proc, run = failing_run(
        tmp_path / "failed",
        "callbacks.step_checkpoint.every_n_steps=2",
        "+callbacks.raise_at.step=8",
        "+callbacks.raise_at.where=mid",
    )
    assert proc.returncode != 0 and "RuntimeError: planted failure in step 8" in proc.stderr
    assert "step 8 was interrupted part-way" in proc.stderr
    assert saved_step(run) == 6  # the last periodic save; step 7 completed but its weights are gone mid-step 8
    folder = run / "checkpoints"  # periodic saves: last.ckpt is step 6's bytes under a second name, written once
    assert os.path.samefile(folder / "step_000006.ckpt", folder / "last.ckpt")
    assert sorted(p.name for p in folder.iterdir()) == [  # the reference once; no temporary file left
        "last.ckpt",
        "reference.pt",
        "step_000002.ckpt",
        "step_000004.ckpt",
        "step_000006.ckpt",
    ]


# ---------------------------------------------------------------- writes that cannot destroy what was there


def test_a_failed_save_keeps_the_previous_checkpoint_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.arange(1000.0)}, path)
    before = path.read_bytes()

    def disk_full(obj, f):  # a full disk half-way through the write
        f.write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("gad.checkpoint_io.torch.save", disk_full)
    with pytest.raises(GADError) as err:
        io.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, path)
    message = str(err.value)
    assert str(path) in message and "no space left on device" in message and "\n" not in message
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_an_interrupted_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"

    def interrupted(obj, f):
        f.write(b"\0" * 4096)
        raise KeyboardInterrupt

    monkeypatch.setattr("gad.checkpoint_io.torch.save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    assert list(tmp_path.iterdir()) == []


def test_last_shares_the_bytes_of_a_periodic_save_and_survives_its_next_replacement(tmp_path):
    step, last = tmp_path / "step_000001.ckpt", tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, step)
    link_atomic(step, last)
    assert os.path.samefile(step, last)  # one serialisation, two names
    AtomicCheckpointIO().save_checkpoint({"step": 2}, last)  # a later save replaces last, not step_1's bytes
    assert torch.load(step, weights_only=True) == {"step": 1}
    assert torch.load(last, weights_only=True) == {"step": 2}


def test_resuming_a_finished_run_trains_no_further_step(uninterrupted, tmp_path):
    """A run stopped (by a signal, or by nothing) just after its last step has a last.ckpt of a finished run:
    resuming it must end at once with the same weights, not train a step past the end."""
    final = uninterrupted / "checkpoints" / "last.ckpt"
    assert saved_step(uninterrupted) == STEPS
    resumed = train(tmp_path / "resumed", *LONG, f"ckpt_path={final}")
    assert saved_step(resumed) == STEPS
    assert_same_weights(weights(uninterrupted), weights(resumed))


# ---------------------------------------------------------------- a full disk, a quota, a file-size limit

# Measured on the toy world (debug=fast): step 1's checkpoint is 16.4 MB (only D has Adam moments yet), every
# later one 24.6 MB; the next largest files are reference.pt and the export's model.safetensors (4.1 MB) and
# the data cache's train split (1.6 MB). A 20 MB file-size limit lets step 1 be saved and fails step 2's save.
FILE_SIZE_LIMIT = 20_000_000


def limit_file_size() -> None:
    # in the child: a write past the limit fails with EFBIG (CPython ignores SIGXFSZ), through the real write path
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, resource.RLIM_INFINITY))


def test_a_full_disk_mid_run_is_one_line_and_the_previous_save_resumes(uninterrupted, tmp_path):
    log_dir = tmp_path / "limited"
    args = [f"paths.log_dir={log_dir}", f"paths.cache_dir={log_dir}/cache", *LONG]
    proc = run_entry("train.py", *args, "callbacks.step_checkpoint.every_n_steps=1", preexec_fn=limit_file_size)
    run = max((log_dir / "train" / "runs").iterdir())
    folder = run / "checkpoints"
    line = assert_one_line_error(
        proc,
        f"cannot write {folder / 'step_000002.ckpt'}: file too large",
        f"then resume with ckpt_path={folder / 'last.ckpt'}",
    )
    assert "free on its filesystem" in line and "ulimit -f" in line
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step_000001.ckpt"]  # no temporary file left
    assert saved_step(run) == 1  # the previous last.ckpt, whole
    assert not (run / "student").exists()
    resumed = train(tmp_path / "resumed", *LONG, f"ckpt_path={folder / 'last.ckpt'}")  # no limit now
    assert saved_step(resumed) == STEPS
    assert_same_weights(weights(uninterrupted), weights(resumed))


@pytest.mark.parametrize(
    "err, found",
    [
        (SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"), errno.ENOSPC),
        (SafetensorError("Error while serializing: I/O error: Disk quota exceeded (os error 122)"), errno.EDQUOT),
        (SafetensorError("Error while serializing: I/O error: File too large (os error 27)"), errno.EFBIG),
        (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), errno.EDQUOT),
        (SafetensorError("Error while serializing: I/O error: Permission denied (os error 13)"), None),
        (OSError(errno.EACCES, os.strerror(errno.EACCES)), None),
    ],
)
def test_full_disk_errors_are_recognised(err, found):
    assert out_of_space(err) == found


def test_a_full_disk_is_recognised_behind_the_error_that_torch_save_raises():
    with pytest.raises(RuntimeError) as caught:
        try:
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        except OSError:  # torch.save's zip writer fails on its next record while the OSError is handled
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # noqa: B904
    assert out_of_space(caught.value) == errno.EFBIG


def test_a_failed_export_keeps_the_previous_folder_and_leaves_no_temporary_one(tmp_path, monkeypatch):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        module = build_module(compose("train", overrides=[f"paths.root_dir={ROOT}", f"paths.output_dir={tmp_path}"]))
    student = tmp_path / "student"
    module.export_student(student)
    before = {p.name: p.read_bytes() for p in student.iterdir()}
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.touch()  # the hint names the checkpoint only if it exists

    def disk_full(directory, *args, **kwargs):  # safetensors half-way through the weights on a full disk
        (Path(directory) / "model.safetensors").write_bytes(b"\0" * 4096)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(module.generator, "save_pretrained", disk_full)
    with pytest.raises(GADError) as caught:
        module.export_student(student, resume=last)
    message = str(caught.value)
    assert message.startswith(f"cannot write {student}: no space left on device (") and "\n" not in message
    assert "free on its filesystem" in message and message.endswith(f"then resume with ckpt_path={last}")
    assert {p.name: p.read_bytes() for p in student.iterdir()} == before  # the previous export, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "student"]  # no temporary folder
