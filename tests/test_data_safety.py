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
