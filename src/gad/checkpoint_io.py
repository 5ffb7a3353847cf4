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

from gad.atomic import open_own
from gad.errors import GADError, out_of_space, writing
from gad.trust import check_archive

TEMP_SUFFIX = ".tmp"
# GAD's frozen KL reference is the generator at the end of warm-up: saved once, beside the checkpoints,
# instead of in each (gad.callbacks.StepCheckpoint). A checkpoint says where its `reference.*` weights are:
REFERENCE_ENTRY = "reference_weights"  # "generator": a copy of the generator's (warm-up: not used yet);
REFERENCE_FILE = "reference.pt"  # or a file name in the checkpoint's folder
REFERENCE_PREFIX = "reference."


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
    deleted and `path` is left as it was. A full disk, quota or file-size limit becomes a GADError
    naming `path` (gad.errors.writing), any other OSError (no permission) one naming it too."""
    tmp = temp_path(path)
    with writing(path, resume=path.parent / "last.ckpt"):  # checkpoint files live beside the run's last.ckpt
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield tmp
            os.replace(tmp, path)
        except BaseException as err:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            if isinstance(err, OSError) and out_of_space(err) is None:
                reason = err.strerror or type(err).__name__
                raise GADError(
                    f"cannot write checkpoint {path}: {reason} (the previous file, if any, is unchanged)"
                ) from err
            raise
    _fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write(file)` on a temporary file beside `path`, flush it to disk, then rename it to `path`."""
    path = Path(path)
    with _replacing(path) as tmp:
        tmp.unlink(missing_ok=True)  # created afresh: never written through a link left at that name
        with os.fdopen(open_own(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save(obj, path)`, streamed to the file (no whole-object buffer) and atomic."""
    write_atomic(path, lambda f: torch.save(obj, f))


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # no hard links here (some network and FUSE filesystems): copy
        with open(source, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, length=16 << 20)
            dst.flush()
            os.fsync(dst.fileno())


def replace_dir(tmp: Path, path: Path) -> None:
    """Put the folder `tmp` at `path` (a sharded checkpoint), replacing what was there. A folder cannot
    be renamed over a non-empty one: the old one is moved aside first and deleted last, so a crash
    in between leaves it as `.<name>.old` rather than losing it."""
    old = path.with_name(f".{path.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if path.is_dir():
        os.replace(path, old)
    elif path.exists():
        path.unlink()
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def write_dir_atomic(path: str | os.PathLike, write: Callable[[Path], Any], resume: Path | None = None) -> None:
    """Call `write(folder)` on an empty temporary folder beside `path`, then put it at `path` (`replace_dir`):
    a failure half-way deletes it and leaves `path` as it was, never a partial folder that looks whole.
    A full disk becomes one line naming `path` (gad.errors.writing; `resume`: the checkpoint to resume from)."""
    path = Path(path)
    tmp = temp_path(path)
    with writing(path, resume=resume):
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            write(tmp)
            replace_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def save_pretrained_atomic(directory: str | os.PathLike, *parts: Any, resume: Path | None = None) -> None:
    """`part.save_pretrained(directory)` for each part (a model, its tokenizer) through `write_dir_atomic`."""

    def save(tmp: Path) -> None:
        for part in parts:
            part.save_pretrained(tmp)

    write_dir_atomic(directory, save, resume=resume)


def link_atomic(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make `path` the same bytes as `source` without serialising again: hard links where the
    filesystem allows them, else a copy; a file replaces `path` atomically, a folder (a sharded
    checkpoint) through `write_dir_atomic`.

    Safe because checkpoints are never written in place: each save replaces its file (or folder)
    with a new one, so a later save of `path` leaves `source` untouched.
    """
    source, path = Path(source), Path(path)
    if source.is_dir():

        def link_files(tmp: Path) -> None:
            for file in source.iterdir():
                _link_or_copy(file, tmp / file.name)

        write_dir_atomic(path, link_files, resume=path.parent / "last.ckpt")
        return
    with _replacing(path) as tmp:
        _link_or_copy(source, tmp)


def load_sharded(folder: str | os.PathLike) -> dict[str, Any]:
    """A sharded (torch.distributed.checkpoint) checkpoint folder as the one-file checkpoint the
    other strategies, `gad.runs.load_module` and `src/eval.py` read: the full weights, and each
    optimizer's state keyed by position as `optimizer.state_dict()` gives it. Needs the whole
    checkpoint in CPU memory (no process group needed)."""
    # Lightning's own reader (behind `python -m lightning.fabric.utilities.consolidate_checkpoint`):
    # the shards through torch.distributed.checkpoint, plus the metadata file Lightning writes beside them.
    from lightning.fabric.utilities.load import _load_distributed_checkpoint

    checkpoint = _load_distributed_checkpoint(Path(folder))
    count = sum(1 for key in checkpoint if key.startswith("optimizer_") and key.removeprefix("optimizer_").isdigit())
    checkpoint["optimizer_states"] = [by_position(checkpoint.pop(f"optimizer_{i}")) for i in range(count)]
    return checkpoint


def by_position(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state dict keyed by parameter name (as sharded saves keep it) re-keyed 0, 1, ... in
    the order its param_groups list the parameters, which is what `optimizer.state_dict()` does."""
    names = [name for group in state["param_groups"] for name in group["params"]]
    index = {name: i for i, name in enumerate(names)}
    return {
        "state": {index[name]: value for name, value in state["state"].items()},
        "param_groups": [{**group, "params": [index[n] for n in group["params"]]} for group in state["param_groups"]],
    }


def consolidate(folder: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write a sharded checkpoint folder as one file (default: `<folder>.consolidated`, beside it)."""
    folder = Path(folder)
    out = Path(out) if out is not None else folder.with_name(folder.name + ".consolidated")
    save_atomic(load_sharded(folder), out)
    return out


def restore_reference(checkpoint: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """Put the `reference.*` weights a StepCheckpoint save left out back into the checkpoint at `path`
    (in place; a checkpoint that holds them, or has no reference, is returned as it is)."""
    where = checkpoint.pop(REFERENCE_ENTRY, None)
    if where is None:
        return checkpoint
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise GADError(f"{path}: not a checkpoint of this project (no state_dict)")
    if where == "generator":  # in warm-up the reference is unused: start_adversarial_phase overwrites it
        state.update(
            {
                REFERENCE_PREFIX + k.removeprefix("generator."): v
                for k, v in list(state.items())
                if isinstance(k, str) and k.startswith("generator.")
            }
        )
        return checkpoint
    # A file name beside the checkpoint, never a path: the checkpoint may come from someone else.
    if not isinstance(where, str) or where != Path(where).name or where in ("", ".", ".."):
        raise GADError(f"{path}: refused: its {REFERENCE_ENTRY} entry {where!r} is not a file name beside it")
    folder = Path(path).parent
    # beside the checkpoint; or, for a save outside checkpoints/ (Lightning's SLURM requeue save), in it
    file = next((f for f in (folder / where, folder / "checkpoints" / where) if f.is_file()), folder / where)
    if not file.is_file():
        raise GADError(
            f"{path}: its KL reference {file} is missing (written once, beside the checkpoints, "
            "when warm-up ended; copy it along with the checkpoint)"
        )
    if not file.resolve().is_relative_to(folder.resolve()):
        raise GADError(f"{path}: refused: its KL reference {file} is a link to a file outside {folder}")
    check_archive(file)
    try:
        reference = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # weights_only: an unpickling error names what the file asked for
        raise GADError(
            f"{file}: not a readable KL reference ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from None
    if not isinstance(reference, dict) or not all(
        isinstance(k, str) and k.startswith(REFERENCE_PREFIX) and isinstance(v, torch.Tensor)
        for k, v in reference.items()
    ):
        raise GADError(f"{file}: not a KL reference (expected {REFERENCE_PREFIX}* tensors)")
    state.update(reference)
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose saves stream to a temporary file in the destination folder and
    replace the destination only once complete (set as the trainer's `plugins` by gad.fit)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        save_atomic(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict[str, Any]:
        kwargs = {} if map_location is None else {"map_location": map_location}
        return restore_reference(super().load_checkpoint(path, weights_only=weights_only, **kwargs), path)

    def remove_checkpoint(self, path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def main(argv: list[str] | None = None) -> None:
    """`python -m gad.checkpoint_io consolidate <sharded.ckpt folder> [<out file>]`."""
    import argparse

    from gad.errors import exit_on_user_error

    parser = argparse.ArgumentParser(prog="python -m gad.checkpoint_io", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cons = sub.add_parser("consolidate", help="a sharded (FSDP) checkpoint folder as one file any strategy resumes")
    cons.add_argument("folder", type=Path)
    cons.add_argument("out", type=Path, nargs="?", default=None, help="default: <folder>.consolidated")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        if not (args.folder / "meta.pt").is_file():
            raise GADError(f"{args.folder}: not a sharded checkpoint folder (no meta.pt)")
        print(consolidate(args.folder, args.out))


if __name__ == "__main__":
    main()
