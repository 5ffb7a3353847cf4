"""User-facing errors: one clear line, a non-zero exit, no traceback.

Anything the user can fix (a bad config value, a malformed dump, a model that cannot be
downloaded) raises `GADError` with a message that names *what* is wrong and *where*
(config key, or file and row). Entry scripts wrap their body in `exit_on_user_error`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

EXIT_USER_ERROR = 2


class GADError(Exception):
    """An error caused by input the user controls; its message is shown as a single line."""


def one_line(message: str) -> str:
    return " ".join(str(message).split())


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a `GADError` into `error: <message>` on stderr and exit status 2."""
    try:
        yield
    except GADError as err:
        print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
