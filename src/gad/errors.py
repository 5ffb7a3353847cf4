"""User-facing errors: one clear line, a non-zero exit, no traceback.

Anything the user can fix (a bad config value, a malformed dump, a model that cannot be
downloaded) raises `GADError` with a message that names *what* is wrong and *where*
(config key, or file and row). Entry scripts wrap their body in `exit_on_user_error`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

EXIT_USER_ERROR = 2


class GADError(Exception):
    """An error caused by input the user controls; its message is shown as a single line."""


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def user_error(err: BaseException | None) -> GADError | None:
    """The `GADError` behind `err`, if any (Hydra's `instantiate` wraps what targets raise)."""
    while err is not None:
        if isinstance(err, GADError):
            return err
        err = err.__cause__ or err.__context__
    return None


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a `GADError` (raised directly or wrapped) into `error: <message>` on stderr and exit status 2."""
    try:
        yield
    except Exception as err:
        found = user_error(err)
        if found is None:
            raise
        print(f"error: {one_line(found)}", file=sys.stderr, flush=True)
        if _in_multirun():
            raise  # Hydra records this job as failed and goes on with the sweep
        sys.exit(EXIT_USER_ERROR)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_cli(main) -> None:
    """Run a `@hydra.main` function so that config mistakes also end in one line and exit 2.

    Hydra prints its own composition errors (an unknown override key, a missing config
    option) over several lines; with HYDRA_FULL_ERROR set it raises them instead, and they
    are condensed here. Other exceptions are bugs and keep their full traceback.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        main()
    except Exception as err:
        found = user_error(err)
        if found is not None:  # a failed sweep job: each job's own error line was printed as it ran
            print(f"error: a sweep job failed: {one_line(found)}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)
        if not isinstance(err, (HydraException, OmegaConfBaseException)):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        cause = err.__cause__
        detail = f" ({str(cause).strip().splitlines()[0]})" if cause is not None and str(cause).strip() else ""
        print(f"error: {one_line(first + detail)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
