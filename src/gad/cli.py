"""What the entry scripts (src/train.py, prepare.py, collect.py, eval.py) share after Hydra has
composed their config: the body is imported only then (so `--help` and `--cfg` stay fast), runs with
the terminal set up for people, and every way it ends becomes an exit status:

    0 done · 2 bad input (one `error:` line) · 3 unfinished, re-run to continue · 130 Ctrl-C
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
from typing import Any

from omegaconf import DictConfig

import gad.run_folder  # noqa: F401  # the ${gad.run_id:} resolver of run folder names (conf/hydra/default.yaml)
from gad.errors import exit_on_interrupt, exit_on_user_error


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
