"""A durable append-only JSONL file keyed by id: nothing lost, nothing twice, resumable.

    with Journal(path, fsync_interval_s=1.0, index_fields=("status",)) as out:
        done = out.keys                      # ids already recorded (read when opened)
        out.append({"id": "p1", ...})        # one os.write of one whole line, straight to the OS
    # closing fsyncs and releases the lock

Guarantees
  * Each record is one `os.write` of one complete line on an O_APPEND descriptor, issued as
    soon as the record exists: a process killed (even by SIGKILL) loses at most the line being
    written. `fsync` runs at most every `fsync_interval_s` seconds (0: after every record) and on
    close, which bounds what a power cut can lose.
  * Opening repairs a torn tail: bytes after the last newline (a line cut by a kill) are
    truncated away, and so is a final line that is not valid JSON; `repaired_bytes` says how
    much went. An invalid line anywhere else is corruption and raises `GADError` with its line.
  * `keys` holds every id present, so a resumed run skips them; a key seen twice (never written
    twice by this class) is counted in `duplicates` and the first occurrence wins.
  * The key is one field (`key="id"`: a non-empty string) or several (`key=("id", "teacher")`: a
    tuple; the first field a non-empty string, the others strings or absent, read as None), so
    one file can hold one record per (prompt, teacher) pair.
  * An exclusive `flock` on the file refuses a second writer ("already in use"); the kernel
    drops it when the process dies, so a killed run never leaves a stale lock.
  * A write that fails (a full disk: ENOSPC, a quota, EIO) raises `GADError` naming the file;
    a partly written line is cut again, so the file keeps every earlier record, whole, and a
    re-run resumes from it.
  * `compact(keep)` rewrites the file atomically (temp file, fsync, rename, dir fsync) keeping the
    LAST record of each key for which `keep(record)` is true.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gad import json_lines
from gad.atomic import open_own
from gad.errors import GADError

Key = str | tuple[str, ...]


def record_key(record: Any, key: Key) -> Any:
    """The journal key of `record` (a string, or a tuple for a several-field `key`), or None if it has none.

    A several-field key needs its first field to be a non-empty string; the other fields are strings or
    absent (None), so records written before a field joined the key still load.
    """
    if not isinstance(record, dict):
        return None
    if isinstance(key, str):
        k = record.get(key)
        return k if isinstance(k, str) and k else None
    first, *rest = key
    head = record.get(first)
    if not isinstance(head, str) or not head:
        return None
    tail = tuple(record.get(f) for f in rest)
    if any(v is not None and not isinstance(v, str) for v in tail):
        return None
    return (head, *tail)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Journal:
    """Append-only JSONL keyed by `key` (see module doc)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        key: Key = "id",
        fsync_interval_s: float = 1.0,
        index_fields: tuple[str, ...] = (),
    ) -> None:
        self.path = Path(path)
        self.key = key
        self.fsync_interval_s = float(fsync_interval_s)
        self.index_fields = tuple(index_fields)
        self.keys: set[Any] = set()  # strings, or tuples for a several-field key
        self.index: dict[Any, dict[str, Any]] = {}  # key -> the index_fields of its last record
        self.duplicates = 0
        self.repaired_bytes = 0
        self.appended = 0
        self._fd: int | None = None
        self._last_sync = 0.0
        self._dirty = False

    # ------------------------------------------------------------------ open / recover / close
    def open(self) -> Journal:
        if self._fd is not None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise GADError(f"{self.path}: cannot create folder ({err.strerror})") from None
        if self.path.is_dir():
            raise GADError(f"{self.path}: is a folder, expected a .jsonl file")
        created = not self.path.exists()
        try:
            fd = open_own(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND)  # never through a planted link
        except OSError as err:
            raise GADError(f"{self.path}: cannot open for writing ({err.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise GADError(f"{self.path}: already in use by another running process") from None
        self._fd = fd
        if created:
            _fsync_dir(self.path.parent)
        try:
            self._recover()
        except BaseException:
            self.close()
            raise
        self._last_sync = time.monotonic()
        return self

    def _recover(self) -> None:
        """Read every complete line (streaming), truncate a torn tail, build `keys` and `index`."""
        assert self._fd is not None
        good_end = 0  # offset just past the last line known to be good
        offset = 0
        bad: tuple[int, str] | None = None  # (line number, why) of an invalid complete line
        with open(self.path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                offset += len(raw)
                if not raw.endswith(b"\n"):
                    break  # the tail after the last newline: a torn write, repaired below
                if bad is not None:  # an invalid line that is not the last one: not a torn write
                    raise GADError(
                        f"{self.path} line {bad[0]}: corrupt record ({bad[1]}); "
                        "only the last line can be torn by a crash, so this file was edited or damaged"
                    )
                if raw.strip():
                    try:
                        record = json_lines.loads(raw)  # a ValueError when nested too deeply
                        if record_key(record, self.key) is None:
                            raise ValueError(f"not an object with a string {self._key_name}")
                    except (ValueError, UnicodeDecodeError) as err:
                        bad = (number, str(err)[:80])
                        continue
                    self._note(record)
                good_end = offset
        if good_end < offset:
            self.repaired_bytes = offset - good_end
            os.ftruncate(self._fd, good_end)
            os.fsync(self._fd)

    @property
    def _key_name(self) -> str:
        return f"'{self.key}'" if isinstance(self.key, str) else "/".join(f"'{f}'" for f in self.key)

    def _note(self, record: dict[str, Any]) -> None:
        k = record_key(record, self.key)
        if k in self.keys:
            self.duplicates += 1
        else:
            self.keys.add(k)
        if self.index_fields:
            self.index[k] = {f: record.get(f) for f in self.index_fields}

    def _write_error(self, err: OSError, action: str) -> GADError:
        """A failed write (ENOSPC, EDQUOT, EIO) as one line naming the file; what was written stays."""
        return GADError(
            f"{self.path}: cannot {action} ({err.strerror or err}); every record written before is kept: "
            "free space and re-run the same command to resume"
        )

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            if self._dirty:
                os.fsync(self._fd)
        except OSError as err:
            raise self._write_error(err, "sync") from None
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            self._dirty = False

    def __enter__(self) -> Journal:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __contains__(self, key: object) -> bool:
        return key in self.keys

    def __len__(self) -> int:
        return len(self.keys)

    # --------------------------------------------------------------------------------- writing
    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line, at once; `GADError` if it has no string key."""
        if self._fd is None:
            raise RuntimeError("Journal.append on a closed journal (use `with Journal(...)` or .open())")
        if record_key(record, self.key) is None:
            raise GADError(f"{self.path}: record without a string {self._key_name}")
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(line)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as err:
            if len(view) < len(line):  # part of the line reached the file: cut it, so the file stays whole lines
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, os.fstat(self._fd).st_size - (len(line) - len(view)))
            raise self._write_error(err, "append a record") from None
        self._note(record)
        self.appended += 1
        self._dirty = True
        now = time.monotonic()
        if self.fsync_interval_s <= 0 or now - self._last_sync >= self.fsync_interval_s:
            self.sync()

    def sync(self) -> None:
        """fsync now (appends already reached the OS; this makes them survive a power cut)."""
        if self._fd is not None and self._dirty:
            try:
                os.fsync(self._fd)
            except OSError as err:
                raise self._write_error(err, "sync") from None
            self._dirty = False
        self._last_sync = time.monotonic()

    # --------------------------------------------------------------------------------- reading
    def records(self) -> Iterator[dict[str, Any]]:
        """Every record currently in the file, in order (reads the file again)."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            for raw in fh:
                if raw.endswith(b"\n") and raw.strip():
                    try:
                        record = json_lines.loads(raw)
                    except ValueError:
                        continue
                    if isinstance(record, dict):
                        yield record

    # ------------------------------------------------------------------------------ compaction
    def compact(self, keep: Callable[[dict[str, Any]], bool] = lambda r: True) -> int:
        """Atomically rewrite the file with the last record of each key that `keep` accepts.

        Returns how many records remain. The lock moves to the new file before the rename, so
        no other writer can slip in.
        """
        if self._fd is None:
            raise RuntimeError("Journal.compact on a closed journal")
        last: dict[Any, dict[str, Any]] = {}
        for record in self.records():
            k = record_key(record, self.key)
            if k is not None:
                last.pop(k, None)  # re-insert so the order follows the latest write
                last[k] = record
        kept = [r for r in last.values() if keep(r)]
        tmp = self.path.with_name(f".{self.path.name}.compact-{os.getpid()}")
        tmp.unlink(missing_ok=True)  # a leftover (or a planted link): the new file is created, never reused
        fd = open_own(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            payload = b"".join((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8") for r in kept)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            os.replace(tmp, self.path)
        except BaseException as err:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            if isinstance(err, OSError):  # the file itself is untouched: the rename never happened
                raise self._write_error(err, "rewrite (compact)") from None
            raise
        _fsync_dir(self.path.parent)
        old, self._fd = self._fd, fd
        fcntl.flock(old, fcntl.LOCK_UN)
        os.close(old)
        self.keys, self.index, self.duplicates = set(), {}, 0
        for r in kept:
            self._note(r)
        self._dirty = False
        return len(kept)
