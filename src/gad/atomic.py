"""Folders built at run time (caches, the toy KD teacher), published whole or not at all.

A folder is built under a temporary name beside its destination (same filesystem, so the
final `rename` is atomic) and renamed into place only once complete. A reader therefore sees
either nothing or the finished folder, never a half-written one; a build killed half-way
leaves only a `.partial-*` folder, which no reader takes for the real one and which the next
build of the same destination removes once its owner process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from gad.errors import GADError

PARTIAL = ".partial-"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_own(path: str | os.PathLike, flags: int, mode: int = 0o644) -> int:
    """`os.open(path, flags)` that never follows a symlink at `path` and opens only a regular file.

    For the files a run or a shared cache writes (journals, locks): a link planted there by whoever
    shared the folder would otherwise send the write (or a truncation) to any file it points at, and a
    FIFO would block the opener forever (O_NONBLOCK while opening; cleared once it is a regular file)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EMLINK):
            raise GADError(
                f"{path}: refused: it is a symbolic link (this file is written, so it must be a plain file)"
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise GADError(f"{path}: refused: not a regular file")
    os.set_blocking(fd, True)
    return fd


def _partial_prefix(dest: Path) -> str:
    return f"{PARTIAL}{dest.name}-{socket.gethostname()}-"


def remove_stale_partials(dest: str | os.PathLike) -> None:
    """Delete this host's leftover temporary builds of `dest` whose process is dead."""
    dest = Path(dest)
    prefix = _partial_prefix(dest)
    if not dest.parent.is_dir():
        return
    for leftover in dest.parent.glob(f"{prefix}*"):
        pid = leftover.name[len(prefix) :].split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def staging_dir(dest: str | os.PathLike) -> Path:
    """A fresh, empty temporary folder beside `dest`, named after it, this host and this process."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(dest)
    return Path(tempfile.mkdtemp(prefix=f"{_partial_prefix(dest)}{os.getpid()}-", dir=dest.parent))


def publish_dir(staging: str | os.PathLike, dest: str | os.PathLike) -> bool:
    """Rename the finished `staging` folder to `dest`. Returns False (and removes `staging`) when
    another process published `dest` first: its folder is as complete as ours."""
    staging, dest = Path(staging), Path(dest)
    try:
        os.rename(staging, dest)  # fails on a non-empty `dest`: never replaces a published folder
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(staging, ignore_errors=True)
        return False
    return True


def discard(path: str | os.PathLike) -> None:
    """Remove an incomplete folder: renamed away first, so no reader sees it half-deleted."""
    path = Path(path)
    if not path.exists():
        return
    aside = Path(tempfile.mkdtemp(prefix=f"{_partial_prefix(path)}{os.getpid()}-", dir=path.parent))
    os.rename(path, aside / path.name)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive `flock` on `path` (created if needed), held for the block; waits for a holder.
    The kernel releases it when its process dies, so a killed builder never blocks the next one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_own(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
