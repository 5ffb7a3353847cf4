"""Run folders: unique per launch, shared by the processes of one run, owned by one live run.

Names: `outputs/<task>/runs/<time>_<run id>` (conf/hydra/default.yaml: `${gad.run_id:}`). The
run id is what every process of ONE run has in common and no other run has:

  GAD_RUN_ID              set by the user (e.g. the same value on every node of a hand-launched
                          multi-node run), or inherited: a launcher process exports its own id,
                          so Lightning's DDP children (which also get `hydra.run.dir`) carry it
  TORCHELASTIC_RUN_ID     torchrun's rendezvous id (`--rdzv-id`, or a fresh one per --standalone
                          launch); torchrun's default "none": its master port instead
  SLURM_JOB_ID.STEP_ID    the tasks of one multi-task `srun` step
  otherwise               8 random hex digits, drawn once per process

Ownership: the first process of a run writes `<run dir>/.run-owner.json` (pid, host, run id)
before Hydra writes anything there. A process of another run finds it and stops with one line,
unless its owner is gone (a dead pid on this host: taken over, e.g. to resume into the folder).
Processes of the same run (same id) share the folder. The owner removes the file when it ends.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gad.atomic import file_lock, pid_alive
from gad.errors import GADError, exit_on_user_error

OWNER_FILE = ".run-owner.json"
_RUN_ID: str | None = None


def run_id(environ: dict[str, str] | None = None) -> str:
    """This run's id (see module doc); drawn at random once per process when nothing is shared."""
    global _RUN_ID
    env = os.environ if environ is None else environ
    shared = shared_run_id(env)
    if shared is not None:
        return shared
    if _RUN_ID is None:
        _RUN_ID = secrets.token_hex(4)
        os.environ["GAD_RUN_ID"] = _RUN_ID  # inherited by the processes this one starts (DDP ranks)
    return _RUN_ID


def shared_run_id(env) -> str | None:
    """The id the processes of one multi-process launch share, if the launcher gives one."""
    if env.get("GAD_RUN_ID"):
        return _safe(env["GAD_RUN_ID"])
    if "TORCHELASTIC_RUN_ID" in env:
        rdzv = env["TORCHELASTIC_RUN_ID"]
        return _safe(rdzv[:12] if rdzv and rdzv != "none" else f"port{env.get('MASTER_PORT', '')}")
    if env.get("SLURM_JOB_ID") and env.get("SLURM_STEP_ID") and int(env.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1:
        return _safe(f"{env['SLURM_JOB_ID']}.{env['SLURM_STEP_ID']}")
    return None


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in text)[:40]


# ------------------------------------------------------------ ownership


def claim(folder: str | os.PathLike, rid: str | None = None) -> bool:
    """Make this process's run the owner of `folder`; True if this process became the owner,
    False if its own run (same id) already owns it. `GADError` if another live run does."""
    folder, rid = Path(folder), rid or run_id()
    folder.mkdir(parents=True, exist_ok=True)
    owner_file = folder / OWNER_FILE
    me = {
        "run_id": rid,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    with file_lock(folder / ".run-owner.lock"):  # claimers on this host, one at a time
        owner = read_owner(owner_file)
        if owner is not None:
            if owner.get("run_id") == rid:
                return False  # a process of this run (a DDP rank, a torchrun or srun task)
            alive = owner.get("host") != me["host"] or pid_alive(int(owner.get("pid", 0)))
            if alive:
                raise GADError(
                    f"hydra.run.dir: {folder} is in use by another run (pid {owner.get('pid')} on {owner.get('host')}, "
                    f"since {owner.get('started')}); choose another folder, or delete {owner_file} if that run is gone"
                )
        tmp = folder / f".run-owner.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(me))
        os.replace(tmp, owner_file)
    atexit.register(release, folder)  # also when the run ends by sys.exit or an exception
    return True


def read_owner(owner_file: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads(owner_file.read_text())
    except (OSError, ValueError):
        return None  # none, or unreadable: nobody to defer to
    return owner if isinstance(owner, dict) else None


def release(folder: str | os.PathLike) -> None:
    """Remove the owner file if this process wrote it."""
    owner_file = Path(folder) / OWNER_FILE
    owner = read_owner(owner_file)
    if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        owner_file.unlink(missing_ok=True)


class RunFolderOwner(Callback):
    """Hydra callback (conf/hydra/default.yaml): claims the run folder before Hydra writes into it
    (a single run), or each sweep job's folder as the job starts; releases it at the end."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = OmegaConf.select(config, "hydra.run.dir")
        with exit_on_user_error():
            claim(folder)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:  # a single run claimed its folder in on_run_start
            claim(config.hydra.runtime.output_dir)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        release(config.hydra.runtime.output_dir)


# Registered on import: by the entry scripts, and by Hydra instantiating the callback above
# (which it does before it resolves the run folder).
OmegaConf.register_new_resolver("gad.run_id", lambda: run_id(), replace=True)
