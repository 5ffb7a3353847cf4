"""The canonical dump record, and the one place that reads and validates dumps.

A record is a dict with
  id        unique non-empty string
  messages  list of {"role", "content"} dicts, ending with a user turn (the prompt)
  response  the teacher's text (absent in a prompts-only file)
  teacher   optional: which model wrote `response`
  meta      optional: anything else (the toy world keeps its task and answer here)

A dump may hold several responses per prompt, one record per (id, teacher) pair (`src/collect.py
teachers=[a,b]` writes them): the records of one id must carry the same prompt and distinct teachers.
A dump without `teacher` fields has one record per id, as always.

Dumps are JSONL (plain, or compressed .gz/.bz2/.xz) or Parquet files, folders of them (where
collect's `.failures` sidecars are skipped and counted, never read), or Hugging Face hub dataset ids. Other
schemas load through `Columns` (the released GAD set: messages="content",
response="teacher_response", id=None). Every problem is reported as one line naming the
file and the row; with `skip_invalid` such rows are dropped and counted instead.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gad import json_lines
from gad.errors import GADError

DUMP_SUFFIXES = (".jsonl", ".json", ".parquet")
# JSONL compressed with what Python reads itself; read line by line like a plain file.
COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# Other compressed or archive files: refused by name in a dump folder, never skipped unseen.
UNREADABLE = (".zst", ".zip", ".lz4", ".tgz", ".7z")
# Sidecars `src/collect.py` writes beside its output: prompts WITHOUT a usable answer (refusals,
# failures, with the refused text). Never training data: skipped in a folder, refused by name.
SIDECAR_SUFFIX = ".failures"  # <output>.failures (this version)
LEGACY_SIDECAR = ".failures.jsonl"  # <output stem>.failures.jsonl (earlier versions)


def is_sidecar(path: Path) -> bool:
    return path.name.endswith((SIDECAR_SUFFIX, LEGACY_SIDECAR))


def dump_format(path: Path) -> str | None:
    """'.jsonl', '.json' or '.parquet' for a file read as a dump (compressed JSONL included), else None."""
    suffixes = path.suffixes[-2:]
    if path.suffix in DUMP_SUFFIXES:
        return path.suffix
    if len(suffixes) == 2 and suffixes[1] in COMPRESSED and suffixes[0] in (".jsonl", ".json"):
        return suffixes[0]
    return None


def _check_file(p: Path) -> None:
    """Refuse, by name, a file that must not be read as a dump."""
    if is_sidecar(p):
        raise GADError(
            f"{p}: a collect.py sidecar (prompts without a usable answer: refusals and failures), "
            "not training data; point data.path at the output file or its folder"
        )
    if dump_format(p) is None:
        kind = "compressed " if p.suffix in (*COMPRESSED, *UNREADABLE) else ""
        raise GADError(
            f"{p}: unsupported {kind}dump format '{''.join(p.suffixes[-2:]) or p.name}' "
            "(use .jsonl, .jsonl.gz/.bz2/.xz or .parquet)"
        )


@dataclass
class Columns:
    """Which source column holds each canonical field. `id=None` numbers rows instead."""

    id: str | None = "id"
    messages: str = "messages"
    response: str | None = "response"
    teacher: str | None = "teacher"
    meta: str | None = "meta"


@dataclass
class LoadReport:
    """What happened to the rows of a dump: how many were kept and why others were not."""

    source: str
    rows: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    files_skipped: dict[str, int] = field(default_factory=dict)  # kind of file -> how many, in a folder

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


class RowError(ValueError):
    """A row that breaks the schema; `str()` says which field and why."""


def is_hub_id(path: str) -> bool:
    """`owner/name` that does not exist locally is taken as a hub dataset id."""
    return not os.path.exists(path) and path.count("/") == 1 and not path.endswith((*DUMP_SUFFIXES, *COMPRESSED))


def dump_files(path: str | os.PathLike, report: LoadReport | None = None) -> list[Path]:
    """The dump files behind a path: the file itself, or every dump file in a folder.

    In a folder, collect's sidecars are skipped and counted in `report.files_skipped`; a
    compressed file that is not JSONL is refused by name rather than skipped unseen.
    """
    p = Path(path)
    if p.is_file():
        _check_file(p)
        return [p]
    if p.is_dir():
        files = []
        for f in sorted(p.iterdir()):
            if not f.is_file() or f.name.startswith("."):
                continue
            if is_sidecar(f):
                if report is not None:
                    report.files_skipped["collect sidecars"] = report.files_skipped.get("collect sidecars", 0) + 1
                continue
            if dump_format(f) is not None:
                files.append(f)
            elif f.suffix in (*COMPRESSED, *UNREADABLE):
                _check_file(f)  # raises: a compressed file we cannot read is not silently left out
        if not files:
            raise GADError(f"{p}: folder holds no .jsonl, .jsonl.gz or .parquet files")
        return files
    raise GADError(f"{p}: no such file or folder")


def _open_binary(file: Path):
    return COMPRESSED.get(file.suffix, open)(file, "rb")


def _iter_jsonl(file: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for each non-blank line; invalid JSON or UTF-8 is a row error.

    Lines are decoded one by one, so a bad byte is reported as that row's error (and skipped with
    `skip_invalid`) instead of ending the whole read.
    """
    try:
        with _open_binary(file) as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    yield (
                        lineno,
                        RowError(f"invalid UTF-8 (byte 0x{raw[err.start]:02x} at byte {err.start + 1} of the line)"),
                    )
                    continue
                if not line.strip():
                    continue
                try:
                    value = json_lines.loads(line)  # json.loads with a nesting bound (RecursionError)
                except json.JSONDecodeError as err:
                    yield lineno, RowError(f"invalid JSON ({err.msg} at column {err.colno})")
                except json_lines.TooDeep as err:
                    yield lineno, RowError(f"invalid JSON ({err})")
                except json_lines.NotText as err:
                    yield lineno, RowError(str(err))
                else:
                    yield lineno, value
    except (OSError, EOFError) as err:  # a damaged or truncated compressed file (gzip, bz2, lzma errors)
        raise GADError(f"{file}: cannot read ({type(err).__name__}: {err})") from None


def _iter_parquet(file: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file)
    except Exception as err:  # pyarrow raises several unrelated types for a bad file
        raise GADError(f"{file}: not a readable Parquet file ({err})") from None
    yield from enumerate(table.to_pylist(), start=1)


def _iter_hub(dataset_id: str, split: str) -> Iterator[tuple[int, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as err:
        reason = type(err).__name__
        if "Offline" in reason or os.environ.get("HF_HUB_OFFLINE") == "1":
            reason = "the Hugging Face hub is unreachable (offline)"
        raise GADError(f"cannot load hub dataset '{dataset_id}' split '{split}': {reason}") from None
    yield from enumerate(ds, start=1)


def iter_raw_rows(path: str, split: str = "train", report: LoadReport | None = None) -> Iterator[tuple[str, int, Any]]:
    """(where, row number, raw row) over a dump; row numbers are 1-based (JSONL: line numbers)."""
    if is_hub_id(str(path)):
        for row_no, row in _iter_hub(str(path), split):
            yield str(path), row_no, row
        return
    for file in dump_files(path, report):
        rows = _iter_parquet(file) if file.suffix == ".parquet" else _iter_jsonl(file)
        for row_no, row in rows:
            yield str(file), row_no, row


def _check_messages(messages: Any, key: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise RowError(f"'{key}' must be a non-empty list of {{role, content}} messages")
    out = []
    for turn in messages:
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("role"), str)
            or not isinstance(turn.get("content"), str)
        ):
            raise RowError(f"'{key}' has a message that is not {{role: str, content: str}}")
        out.append({"role": turn["role"], "content": turn["content"]})
    if out[-1]["role"] != "user":
        raise RowError(f"'{key}' must end with a user turn (ends with '{out[-1]['role']}')")
    return out


def normalise_row(row: Any, columns: Columns, row_no: int, require_response: bool = True) -> dict[str, Any]:
    """One raw row -> a canonical record, or `RowError` naming the field at fault."""
    if isinstance(row, RowError):
        raise row
    if not isinstance(row, dict):
        raise RowError(f"expected a JSON object, got {type(row).__name__}")
    if columns.id is None:
        rid = f"row-{row_no}"
    else:
        if columns.id not in row:
            raise RowError(f"missing field '{columns.id}'")
        rid = row[columns.id]
        if isinstance(rid, int) and not isinstance(rid, bool):
            rid = str(rid)
        if not isinstance(rid, str) or not rid:
            raise RowError(f"'{columns.id}' must be a non-empty string")
    if columns.messages not in row:
        raise RowError(f"missing field '{columns.messages}'")
    record: dict[str, Any] = {"id": rid, "messages": _check_messages(row[columns.messages], columns.messages)}
    if columns.response is not None and (require_response or row.get(columns.response) is not None):
        if columns.response not in row:
            raise RowError(f"missing field '{columns.response}'")
        response = row[columns.response]
        if not isinstance(response, str):
            raise RowError(f"'{columns.response}' must be a string, got {type(response).__name__}")
        if not response.strip():
            raise RowError(f"'{columns.response}' is empty")
        record["response"] = response
    if columns.teacher is not None and row.get(columns.teacher) is not None:
        record["teacher"] = str(row[columns.teacher])
    if columns.meta is not None and row.get(columns.meta) is not None:
        record["meta"] = row[columns.meta]
    return record


def _check_pair(record: dict[str, Any], seen: dict[str, tuple[list, set]]) -> None:
    """A second record of an id is another teacher's response to the same prompt, or an error."""
    if record["id"] not in seen:
        return
    prompt, teachers = seen[record["id"]]
    teacher = record.get("teacher")
    if teacher in teachers or None in teachers or teacher is None:
        who = f" for teacher '{teacher}'" if teacher is not None and teacher in teachers else ""
        raise RowError(f"duplicate id '{record['id']}'{who}")
    if record["messages"] != prompt:
        raise RowError(f"id '{record['id']}' repeats with another prompt (its records differ only by teacher)")


def read_records(
    path: str | os.PathLike,
    columns: Columns | None = None,
    *,
    split: str = "train",
    skip_invalid: bool = False,
    require_response: bool = True,
) -> tuple[list[dict[str, Any]], LoadReport]:
    """Read and validate a whole dump.

    Raises `GADError` ("<file> row <n>: <what>") at the first bad row, or with
    `skip_invalid` drops bad rows and counts them in the returned report.
    """
    columns = columns or Columns()
    report = LoadReport(source=str(path))
    records: list[dict[str, Any]] = []
    seen: dict[str, tuple[list, set]] = {}  # id -> (its prompt, the teachers it has a record of)
    for where, row_no, row in iter_raw_rows(str(path), split, report):
        report.rows += 1
        try:
            record = normalise_row(row, columns, row_no, require_response)
            _check_pair(record, seen)
        except RowError as err:
            if not skip_invalid:
                hint = " (data.skip_invalid=true skips such rows)"
                raise GADError(f"{where} row {row_no}: {err}{hint}") from None
            report.skip(str(err).split(" (")[0].split(" '")[0])
            continue
        prompt, teachers = seen.setdefault(record["id"], (record["messages"], set()))
        teachers.add(record.get("teacher"))
        records.append(record)
    if report.rows == 0:
        raise GADError(f"{path}: empty dump (no records)")
    if not records:
        raise GADError(f"{path}: no valid records among {report.rows} rows (skipped: {report.skipped})")
    report.kept = len(records)
    return records, report


def write_jsonl(records: Iterable[dict[str, Any]], path: str | os.PathLike) -> int:
    """Write records as JSONL (UTF-8, one object per line); returns how many were written."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n
