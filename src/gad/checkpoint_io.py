"""Checkpoint files that a failed or interrupted write cannot destroy.

Lightning's `TorchCheckpointIO` serialises the whole checkpoint into an in-memory buffer (and
copies it once more to write it), then writes it through fsspec, which stages it in `$TMPDIR`
and moves it into place: across filesystems that move truncates the existing file first, and a
kill during it leaves a partial file behind. Here a checkpoint streams from `torch.save` straight
into a temporary file beside its destination, is flushed to disk, and replaces the destination
in one `os.replace`: a reader sees the old file or the new one, never a part.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from gad.errors import GADError

TEMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    """A hidden name beside `path`, distinct per process (ranks never share one)."""
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on any failure it is
    deleted and `path` is left as it was. An OSError (a full disk, no permission) becomes a GADError
    naming `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(err, OSError):
            reason = err.strerror or type(err).__name__
            raise GADError(f"cannot write checkpoint {path}: {reason} (the previous file, if any, is unchanged)") from err
        raise
    _fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write(file)` on a temporary file beside `path`, flush it to disk, then rename it to `path`."""
    path = Path(path)
    with _replacing(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save(obj, path)`, streamed to the file (no whole-object buffer) and atomic."""
    write_atomic(path, lambda f: torch.save(obj, f))


def link_atomic(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make `path` the same bytes as `source` without serialising again: a hard link where the
    filesystem allows one, else a copy; either replaces `path` atomically.

    Safe because checkpoint files are never written in place: each save replaces its file with a
    new one, so a later save of `path` leaves `source` untouched.
    """
    source, path = Path(source), Path(path)
    with _replacing(path) as tmp:
        try:
            os.link(source, tmp)
        except OSError:  # no hard links here (some network and FUSE filesystems): copy
            with open(source, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, length=16 << 20)
                dst.flush()
                os.fsync(dst.fileno())


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose saves stream to a temporary file in the destination folder and
    replace the destination only once complete (set as the trainer's `plugins` by gad.train)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        save_atomic(checkpoint, path)

    def remove_checkpoint(self, path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
