"""What a dump folder, a cache or a full disk can do to a run: nothing silent, nothing half-trusted.

Sidecars (collect's failures) never load as training data, compressed dumps load, invalid UTF-8
is one line naming file and line (or skipped and counted), a half-written tokenised-data cache is
rebuilt rather than trusted, and ENOSPC while collecting is one line naming the file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import ROOT

from gad.data import DistillDataModule
from gad.models import load_tokenizer

TOKENIZER = load_tokenizer(str(ROOT / "data" / "toy" / "tokenizer"))


def rec(i, prompt="Add: 1 2", response="3"):
    return {"id": f"r{i}", "messages": [{"role": "user", "content": prompt}], "response": response}


def write(path: Path, *rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def datamodule(path, **kw):
    args = dict(val_size=2, batch_size=2, max_prompt_tokens=64, max_response_tokens=16, cache_dir=None)
    dm = DistillDataModule(TOKENIZER, str(path), **{**args, **kw})
    dm.setup()
    return dm


# ------------------------------------------------------------ the tokenised-data cache


def only_cache_entry(cache: Path) -> Path:
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    return entry


@pytest.mark.parametrize("damage", ["no stats.json", "truncated arrow file"])
def test_a_half_written_cache_is_rebuilt_not_trusted(tmp_path, damage):
    path = write(tmp_path / "d.jsonl", *[rec(i) for i in range(6)])
    cache = tmp_path / "cache"
    first = datamodule(path, cache_dir=str(cache))
    entry = only_cache_entry(cache)
    if damage == "no stats.json":  # what a run killed during save_to_disk left
        (entry / "stats.json").unlink()
    else:
        arrow = next(entry.rglob("*.arrow"))
        arrow.write_bytes(arrow.read_bytes()[:20])
    again = datamodule(path, cache_dir=str(cache))
    assert again.stats["cache"] == "miss"
    assert again.train_set["prompt_ids"] == first.train_set["prompt_ids"]
    assert datamodule(path, cache_dir=str(cache)).stats["cache"] == "hit"  # the rebuilt one is complete


def test_a_cache_is_published_whole_and_a_dead_builders_leftover_is_ignored(tmp_path, monkeypatch):
    path = write(tmp_path / "d.jsonl", *[rec(i) for i in range(6)])
    cache = tmp_path / "cache"

    import datasets

    def killed(self, *args, **kwargs):  # the process dies half-way through writing the cache
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(datasets.DatasetDict, "save_to_disk", killed)
        with pytest.raises(KeyboardInterrupt):
            datamodule(path, cache_dir=str(cache))
    leftovers = [p for p in cache.iterdir()]
    assert leftovers and all(p.name.startswith(".partial-") for p in leftovers)  # never under the real name
    for p in leftovers:  # as a dead process on this host left it
        p.rename(p.with_name(p.name.replace(f"-{__import__('os').getpid()}-", "-999999999-")))
    assert datamodule(path, cache_dir=str(cache)).stats["cache"] == "miss"
    assert [p.name.startswith(".partial-") for p in cache.iterdir()] == [False]  # the leftover was cleaned
    assert datamodule(path, cache_dir=str(cache)).stats["cache"] == "hit"


def test_two_builders_of_one_cache_publish_one_complete_folder(tmp_path):
    from gad.atomic import publish_dir, staging_dir

    dest = tmp_path / "cache" / "key"
    a, b = staging_dir(dest), staging_dir(dest)
    (a / "stats.json").write_text("a")
    (b / "stats.json").write_text("b")
    assert publish_dir(a, dest) is True and publish_dir(b, dest) is False
    assert (dest / "stats.json").read_text() == "a" and not a.exists() and not b.exists()
    shutil.rmtree(dest)


# ------------------------------------------------------------ what a dump folder holds


def test_a_folders_sidecars_are_skipped_and_counted_and_compressed_dumps_load(tmp_path):
    import bz2
    import gzip

    from gad.data.records import read_records

    folder = tmp_path / "dump"
    folder.mkdir()
    write(folder / "a.jsonl", rec(1))
    (folder / "b.jsonl.gz").write_bytes(gzip.compress((json.dumps(rec(2)) + "\n").encode()))
    (folder / "c.jsonl.bz2").write_bytes(bz2.compress((json.dumps(rec(3)) + "\n").encode()))
    refusal = {**rec(9, response="I'm sorry, but I can't help with that."), "status": "rejected", "reason": "refusal"}
    write(folder / "a.failures.jsonl", refusal)  # collect's sidecar, as earlier versions named it
    write(folder / "a.jsonl.failures", refusal)  # and as it is named now
    records, report = read_records(folder)
    assert sorted(r["id"] for r in records) == ["r1", "r2", "r3"]
    assert report.files_skipped == {"collect sidecars": 2}
    dm = datamodule(folder, val_size=0)
    assert dm.stats["files skipped: collect sidecars"] == 2  # the counted line of the data table


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("a.failures.jsonl", "a collect.py sidecar"),
        ("a.jsonl.failures", "a collect.py sidecar"),
        ("a.jsonl.zst", "unsupported compressed dump format '.jsonl.zst'"),
        ("a.parquet.gz", "unsupported compressed dump format '.parquet.gz'"),
    ],
)
def test_a_sidecar_or_an_unreadable_compressed_file_is_refused_by_name(tmp_path, name, fragment):
    from gad.data.records import read_records
    from gad.errors import GADError

    (tmp_path / name).write_bytes(b"x")
    with pytest.raises(GADError, match=fragment):
        read_records(tmp_path / name)
    write(tmp_path / "ok.jsonl", rec(1))
    if "failures" not in name:  # in a folder too: never left out without a word
        with pytest.raises(GADError, match=fragment):
            read_records(tmp_path)


# ------------------------------------------------------------ invalid UTF-8


def bad_utf8_dump(path: Path) -> Path:
    good = [json.dumps(rec(i)).encode() for i in range(4)]
    bad = (
        json.dumps(rec(7, response="caf\u00e9"), ensure_ascii=False).encode().replace("\u00e9".encode(), b"\xe9")
    )  # Latin-1
    path.write_bytes(b"\n".join([good[0], good[1], bad, good[2], good[3]]) + b"\n")
    return path


def test_invalid_utf8_names_file_and_row_and_skip_invalid_skips_it(tmp_path):
    from gad.data.records import read_records
    from gad.errors import GADError

    path = bad_utf8_dump(tmp_path / "d.jsonl")
    with pytest.raises(GADError) as err:
        read_records(path)
    assert f"{path} row 3: invalid UTF-8 (byte 0xe9 at byte" in str(err.value)
    assert "data.skip_invalid=true" in str(err.value)
    records, report = read_records(path, skip_invalid=True)
    assert [r["id"] for r in records] == ["r0", "r1", "r2", "r3"] and report.skipped == {"invalid UTF-8": 1}


def test_invalid_utf8_through_the_entry_point_is_one_line(tmp_path):
    from conftest import assert_one_line_error, run_entry

    path = bad_utf8_dump(tmp_path / "d.jsonl")
    proc = run_entry(
        "train.py",
        "data=dump",
        f"data.path={path}",
        f"paths.log_dir={tmp_path}",
        "data.cache_dir=null",
        "data.val_size=1",
    )
    assert_one_line_error(proc, f"{path} row 3", "invalid UTF-8")


# ------------------------------------------------------------ lines that parse but break what follows

DEEP = "[" * 100_000 + "]" * 100_000  # json.loads: RecursionError
BAD_ROWS = {
    "deep": ('{"id": "r2", "messages": ' + DEEP + "}", "JSON nested deeper than 64 levels"),
    "meta": (
        '{"id": "r2", "messages": [{"role": "user", "content": "hi"}], "response": "x", "meta": '
        + "[" * 200
        + "]" * 200
        + "}",
        "JSON nested deeper than 64 levels",
    ),
    "surrogate": (
        '{"id": "r2", "messages": [{"role": "user", "content": "a \\ud800 b"}], "response": "x"}',
        "lone surrogate (\\ud800)",
    ),
}


def dump_with(path: Path, bad: str) -> Path:
    good = [json.dumps(rec(i, prompt=f"Add: {i} 2")) for i in (0, 1, 3, 4)]
    path.write_text("\n".join([good[0], good[1], bad, good[2], good[3]]) + "\n")
    return path


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_a_too_deep_or_non_unicode_line_names_file_and_row_and_can_be_skipped(tmp_path, kind):
    """The reader of train, eval and collect (gad.data.records) and the tokenised data module."""
    from gad.data.records import read_records
    from gad.errors import GADError

    line, fragment = BAD_ROWS[kind]
    path = dump_with(tmp_path / "d.jsonl", line)
    with pytest.raises(GADError) as err:
        read_records(path)
    assert f"{path} row 3: " in str(err.value) and fragment in str(err.value), str(err.value)
    dm = datamodule(path, skip_invalid=True, val_size=1)  # tokenises what is kept
    assert len(dm.train_set) + len(dm.val_set) == 4 and dm.stats["invalid_skipped"] == 1


def test_emoji_surrogate_pairs_still_load(tmp_path):
    from gad.data.records import read_records

    path = dump_with(tmp_path / "d.jsonl", json.dumps(rec(2, prompt="smile \U0001f600")))  # "\ud83d\ude00"
    assert "\\ud83d\\ude00" in path.read_text()
    assert read_records(path)[0][2]["messages"][0]["content"] == "smile \U0001f600"


@pytest.mark.parametrize("kind", ["deep", "surrogate"])
def test_a_journal_with_such_a_line_is_one_line_naming_it(tmp_path, kind):
    """Collect's output and the eval cache (gad.api.Journal): a corrupt record, not a traceback."""
    from gad.api.journal import Journal
    from gad.errors import GADError

    path = dump_with(tmp_path / "out.jsonl", BAD_ROWS[kind][0])
    with pytest.raises(GADError, match=f"{path} line 3: corrupt record"):
        Journal(path).open()
    assert sum(1 for r in Journal(path).records()) == 4


@pytest.mark.parametrize("kind", ["deep", "surrogate"])
def test_prepare_counts_such_a_line_as_malformed(tmp_path, kind):
    from conftest import run_entry

    path = dump_with(tmp_path / "p.jsonl", BAD_ROWS[kind][0])
    proc = run_entry(
        "prepare.py",
        "source.kind=local",
        f"source.path={path}",
        "sample.test_size=1",
        f"out_dir={tmp_path / 'out'}",
        f"hydra.run.dir={tmp_path / 'h'}",
        timeout=120,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    kept = [json.loads(x) for name in ("train", "test") for x in (tmp_path / "out" / f"{name}.jsonl").open()]
    assert len(kept) == 4


@pytest.mark.parametrize("kind", ["deep", "surrogate"])
def test_collect_names_the_prompt_file_and_row(tmp_path, kind):
    from conftest import assert_one_line_error, run_entry

    path = dump_with(tmp_path / "p.jsonl", BAD_ROWS[kind][0])
    proc = run_entry(
        "collect.py",
        f"prompts={path}",
        f"output={tmp_path / 'out.jsonl'}",
        f"paths.log_dir={tmp_path / 'logs'}",
        "teacher.base_url=http://127.0.0.1:9/v1",
        "teacher.require_api_key=false",
        timeout=120,
    )
    assert_one_line_error(proc, f"{path} row 3", BAD_ROWS[kind][1])
