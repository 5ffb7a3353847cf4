"""What the entry scripts (src/train.py, prepare.py, collect.py, eval.py) share after Hydra has
composed their config: the body is imported only then (so `--help` and `--cfg` stay fast), runs with
the terminal set up for people, and every way it ends becomes an exit status:

    0 done · 2 bad input (one `error:` line) · 3 unfinished, re-run to continue · 130 Ctrl-C
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import signal
import sys
from typing import Any

from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

import gad.run_folder  # noqa: F401  # the ${gad.run_id:} resolver of run folder names (conf/hydra/default.yaml)
from gad.config.renamed import renamed_to
from gad.errors import (
    EXIT_USER_ERROR,
    GADError,
    exit_on_interrupt,
    exit_on_user_error,
    one_line,
    refuse_secrets,
    unplaced_full_disk,
    user_error,
)


@contextlib.contextmanager
def interrupt_at_once():
    """Ctrl-C raises KeyboardInterrupt where the program is, also inside `asyncio.run`. asyncio's own handler
    (installed only while the default one is) first cancels the main task and waits for it to unwind, and a
    cancelled request's cleanup can wait on a connection, i.e. for a server's reply."""

    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def start(
    cfg: DictConfig,
    body: str,
    *,
    returns_status: bool,
    check: str = "",
    console: bool = False,
    prints_run_folder: bool = False,
    kept_on_interrupt: str = "",
) -> Any:
    """Run `body` ("module:function", called with `cfg`). With `returns_status` its return value is
    an exit status (non-zero: exit with it); otherwise it is handed back to Hydra (a sweeper's metric).
    `check` ("module:function"): validates `cfg` before the body's module is imported, so a config
    mistake is one line before torch and Lightning are even imported;
    `console`: third-party progress bars and info logs off unless verbose=true (gad.console);
    `prints_run_folder`: then the first line names the run folder (cfg.paths.output_dir).
    `kept_on_interrupt`: Ctrl-C is an `error:` line saying what survived, and exit 130."""
    interrupt = exit_on_interrupt(kept_on_interrupt) if kept_on_interrupt else contextlib.nullcontext()
    with exit_on_user_error(), interrupt, interrupt_at_once() if kept_on_interrupt else contextlib.nullcontext():
        if console:
            from gad.console import quiet_raw_bars, setup

            quiet_raw_bars(bool(cfg.get("verbose", False)))  # before any library imports tqdm
        if check:
            _function(check)(cfg)
        run = _function(body)
        if console:
            setup(cfg, run_dir=cfg.paths.output_dir if prints_run_folder else None)
        result = run(cfg)
    if returns_status:
        if result is not None and not isinstance(result, int):  # a body's bug, not the user's: say so, loudly
            raise TypeError(f"{body} returned {type(result).__name__}, not an exit status")
        if result:
            sys.exit(result)
    return None if returns_status else result


def _function(name: str) -> Any:
    module, function = name.split(":")
    return getattr(importlib.import_module(module), function)


def run_cli(main) -> None:
    """Run a `@hydra.main` function so that config mistakes also end in one line and exit 2.

    Hydra prints its own composition errors (an unknown override key, a missing config
    option) over several lines; with HYDRA_FULL_ERROR set it raises them instead, and they
    are condensed here. Other exceptions are bugs and keep their full traceback.
    """
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        refuse_secrets(sys.argv[1:])  # before Hydra writes the overrides into .hydra/
    except GADError as err:
        print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
    try:
        main()
    except Exception as err:
        found = user_error(err) or unplaced_full_disk(err)
        if found is not None:  # a failed sweep job: each job's own error line was printed as it ran
            print(f"error: a sweep job failed: {one_line(found)}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)
        if not isinstance(err, (HydraException, OmegaConfBaseException)):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        cause = err.__cause__
        detail = f" ({str(cause).strip().splitlines()[0]})" if cause is not None and str(cause).strip() else ""
        overridden = re.match(r"Could not override '([\w.]+)'", first)
        if overridden and (new := renamed_to(overridden.group(1))):
            detail += f"; it was renamed {new}"
        print(f"error: {one_line(first + detail)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
