"""Dump loading, validation, tokenisation, splits, caching and the step-indexed sampler."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import ROOT, assert_one_line_error, run_entry

from gad.data import DistillDataModule, StepBatchSampler, read_records
from gad.data.records import Columns
from gad.errors import GADError
from gad.models import load_tokenizer

TOKENIZER = load_tokenizer(str(ROOT / "data" / "toy" / "tokenizer"))
GOOD = {"id": "a", "messages": [{"role": "user", "content": "hi"}], "response": "hello"}


def write(path: Path, *lines) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def rec(i, prompt="Add: 1 2", response="3", **extra):
    return {"id": f"r{i}", "messages": [{"role": "user", "content": prompt}], "response": response, **extra}


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ({"messages": GOOD["messages"], "response": "x"}, "missing field 'id'"),
        ({**GOOD, "messages": "hi"}, "'messages' must be a non-empty list"),
        ({**GOOD, "messages": [{"role": "assistant", "content": "x"}]}, "'messages' must end with a user turn"),
        ({**GOOD, "response": 3}, "'response' must be a string"),
        ({**GOOD, "response": "  "}, "'response' is empty"),
        ("{not json", "invalid JSON"),
        ({**GOOD}, "duplicate id 'a'"),
    ],
)
def test_malformed_rows_name_file_and_row(tmp_path, bad, fragment):
    path = write(tmp_path / "d.jsonl", GOOD, bad)
    with pytest.raises(GADError) as err:
        read_records(path)
    assert f"{path} row 2: {fragment}" in str(err.value)
    records, report = read_records(path, skip_invalid=True)
    assert [r["id"] for r in records] == ["a"] and sum(report.skipped.values()) == 1


def test_empty_dump_is_an_error(tmp_path):
    with pytest.raises(GADError, match="empty dump"):
        read_records(write(tmp_path / "e.jsonl"))


def test_hub_id_offline_fails_at_once_with_one_line():
    with pytest.raises(GADError, match="offline"):
        read_records("someone/some-dataset")


def test_released_gad_schema_loads_through_column_keys(tmp_path):
    row = {"content": [{"role": "user", "content": "Q"}], "teacher_response": "A"}
    path = write(tmp_path / "release.jsonl", row, row)
    records, _ = read_records(
        path, Columns(id=None, messages="content", response="teacher_response", teacher=None, meta=None)
    )
    assert [r["id"] for r in records] == ["row-1", "row-2"] and records[0]["response"] == "A"


def test_parquet_and_folders_load(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "dump"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist([rec(1), rec(2)]), folder / "a.parquet")
    write(folder / "b.jsonl", rec(3))
    assert [r["id"] for r in read_records(folder)[0]] == ["r1", "r2", "r3"]


def datamodule(path, **kw):
    args = dict(val_size=2, batch_size=2, max_prompt_tokens=64, max_response_tokens=16, cache_dir=None)
    dm = DistillDataModule(TOKENIZER, str(path), **{**args, **kw})
    dm.setup()
    return dm


def test_teacher_response_ends_with_the_students_end_of_turn_token(tmp_path):
    dm = datamodule(write(tmp_path / "d.jsonl", *[rec(i) for i in range(6)]))
    row = dm.train_set[0]
    assert row["response_ids"][-1] == TOKENIZER.eos_token_id == TOKENIZER.convert_tokens_to_ids("<|im_end|>")
    assert TOKENIZER.decode(row["response_ids"][:-1]) == "3"
    assert TOKENIZER.decode(row["prompt_ids"]).endswith("<|im_start|>assistant\n")


def test_long_prompts_are_truncated_or_dropped_and_counted(tmp_path):
    rows = [rec(i) for i in range(5)] + [rec(9, prompt="x" * 200)]
    path = write(tmp_path / "d.jsonl", *rows)
    kept = datamodule(path, truncation="left")
    assert kept.stats["prompts_truncated"] == 1 and kept.stats["train"] + kept.stats["validation"] == 6
    assert max(len(r["prompt_ids"]) for r in kept.train_set) <= 64
    dropped = datamodule(path, truncation="drop")
    assert dropped.stats["prompts_dropped_too_long"] == 1 and dropped.stats["train"] + dropped.stats["validation"] == 5


def test_long_responses_are_cut_to_the_sampling_budget(tmp_path):
    dm = datamodule(write(tmp_path / "d.jsonl", *[rec(i, response="y" * 40) for i in range(4)]), max_response_tokens=10)
    assert dm.stats["responses_truncated"] == 4 and all(len(r["response_ids"]) == 10 for r in dm.train_set)


def test_validation_split_is_deterministic_and_independent_of_row_order(tmp_path):
    rows = [rec(i) for i in range(20)]
    a = datamodule(write(tmp_path / "a.jsonl", *rows), val_size=5)
    b = datamodule(write(tmp_path / "b.jsonl", *reversed(rows)), val_size=5)
    assert sorted(a.val_set["id"]) == sorted(b.val_set["id"])
    assert not set(a.val_set["id"]) & set(a.train_set["id"])


def test_tokenisation_is_cached(tmp_path):
    path = write(tmp_path / "d.jsonl", *[rec(i) for i in range(6)])
    first = datamodule(path, cache_dir=str(tmp_path / "cache"))
    second = datamodule(path, cache_dir=str(tmp_path / "cache"))
    assert (first.stats["cache"], second.stats["cache"]) == ("miss", "hit")
    assert second.train_set["prompt_ids"] == first.train_set["prompt_ids"]
    write(path, *[rec(i, response="changed") for i in range(6)])  # a changed file is not served stale
    assert datamodule(path, cache_dir=str(tmp_path / "cache")).stats["cache"] == "miss"


def test_collate_pads_prompts_left_and_responses_right(tmp_path):
    dm = datamodule(
        write(tmp_path / "d.jsonl", rec(1, prompt="a"), rec(2, prompt="a much longer one", response="12345"), rec(3)),
        val_size=0,
    )
    batch = dm.collate([dm.train_set[0], dm.train_set[1]])
    assert batch["prompt_mask"][0, 0] == 0 and batch["prompt_mask"][0, -1] == 1
    assert batch["response_mask"][0, 0] == 1 and batch["response_mask"][0, -1] == 0


def test_the_train_loader_starts_where_it_is_told(tmp_path):
    dm = datamodule(write(tmp_path / "d.jsonl", *(rec(i) for i in range(9))), val_size=1)
    stream = iter(dm.train_dataloader())
    ids = [next(stream)["ids"] for _ in range(5)]
    dm.start_at(3)  # a run resumed after 3 steps
    assert [next(iter(dm.train_dataloader()))["ids"]] == ids[3:4]


def test_step_sampler_shards_ranks_and_resumes_exactly():
    full = StepBatchSampler(10, 3, seed=7)
    it = iter(full)
    stream = [next(it) for _ in range(8)]  # crosses passes over the data
    resumed = iter(StepBatchSampler(10, 3, seed=7, start_step=5))
    assert [next(resumed) for _ in range(3)] == stream[5:8]
    r0, r1 = StepBatchSampler(10, 2, 7, rank=0, world_size=2), StepBatchSampler(10, 2, 7, rank=1, world_size=2)
    for step in range(5):
        assert not set(r0.batch_at(step)) & set(r1.batch_at(step))
    first_pass = [i for step in range(4) for i in stream[step]][:10]  # positions 0..9 = one pass
    assert sorted(first_pass) == list(range(10))


def test_a_malformed_dump_stops_train_py_with_one_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", GOOD, "{oops")
    proc = run_entry("train.py", f"data.path={path}", f"paths.log_dir={tmp_path}", "data.cache_dir=null")
    assert_one_line_error(proc, f"{path} row 2", "invalid JSON")


# ----------------------------------------------------------------------------- several teachers
def two_teacher_rows(n):
    """n prompts, each answered by teachers 'a' and 'b' (b's records come after all of a's, as a collect
    run may write them)."""
    a = [rec(i, prompt=f"Add: {i} 1", response=str(i + 1), teacher="a") for i in range(n)]
    b = [rec(i, prompt=f"Add: {i} 1", response=f"= {i + 1}", teacher="b") for i in range(n)]
    return a + b


@pytest.mark.parametrize(
    "second, fragment",
    [
        (rec(1, teacher="a"), "duplicate id 'r1' for teacher 'a'"),
        (rec(1, prompt="other", teacher="b"), "id 'r1' repeats with another prompt"),
        (rec(1), "duplicate id 'r1'"),
    ],
)
def test_a_prompt_may_have_one_record_per_teacher_and_no_more(tmp_path, second, fragment):
    ok = write(tmp_path / "ok.jsonl", rec(1, teacher="a"), rec(1, teacher="b"))
    assert [(r["id"], r["teacher"]) for r in read_records(ok)[0]] == [("r1", "a"), ("r1", "b")]
    bad = write(tmp_path / "bad.jsonl", rec(1, teacher="a"), second)
    with pytest.raises(GADError) as err:
        read_records(bad)
    assert f"{bad} row 2: {fragment}" in str(err.value)


def test_each_step_yields_every_teachers_response_of_its_prompts(tmp_path):
    dm = datamodule(write(tmp_path / "d.jsonl", *two_teacher_rows(10)), val_size=2, batch_size=3)
    assert dm.stats["train"] == 16 and dm.stats["train prompts"] == 8 and dm.stats["teachers"] == "a 10, b 10"
    stream = iter(dm.train_dataloader())
    seen = set()
    for _ in range(3):
        batch = next(stream)
        assert len(batch["ids"]) == 6 and batch["teachers"] == ["a", "b"] * 3  # 3 prompts, both teachers each
        assert batch["ids"][0::2] == batch["ids"][1::2]
        assert batch["response_prompt"].tolist() == [0, 0, 1, 1, 2, 2] and batch["prompt_rows"].tolist() == [0, 2, 4]
        assert torch.equal(batch["prompt_ids"][0::2], batch["prompt_ids"][1::2])  # one prompt, two responses
        assert not torch.equal(batch["response_ids"][0::2], batch["response_ids"][1::2])
        seen.update(batch["ids"])
    assert len(seen) == 8  # the first pass covers the 8 training prompts
    assert not seen & set(dm.val_set["id"])  # a prompt's responses are all on one side of the split


def test_one_teacher_batches_are_unchanged(tmp_path):
    dm = datamodule(write(tmp_path / "d.jsonl", *(rec(i) for i in range(9))), val_size=1, batch_size=3)
    assert dm.train_groups is None and "teachers" not in dm.stats
    batch = next(iter(dm.train_dataloader()))
    rows = StepBatchSampler(8, 3, seed=0).batch_at(0)
    assert batch["ids"] == [dm.train_set[i]["id"] for i in rows] and batch["teachers"] == ["teacher"] * 3
    assert batch["response_prompt"].tolist() == batch["prompt_rows"].tolist() == [0, 1, 2]


def test_per_teacher_means_and_shared_pairs():
    from gad import losses
    from gad.teachers import per_teacher_means, prompt_view, shared_pairs

    scores = torch.tensor([1.0, 4.0, 3.0, 2.0, 6.0])
    means = per_teacher_means(scores, ["a", "b", "a", "b", "c"])
    assert list(means) == ["a", "b", "c"]
    assert [round(v.item(), 6) for v in means.values()] == [2.0, 3.0, 6.0]
    with pytest.raises(ValueError, match="5 score rows but 2"):
        per_teacher_means(scores, ["a", "b"])
    # 2 prompts x 2 samples; prompt 0 has teachers a and b, prompt 1 only a
    student = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    teacher = torch.tensor([1.0, 2.0, 2.5])
    lined = shared_pairs(student, torch.tensor([0, 0, 1]))
    assert lined.tolist() == [[0.0, 1.0], [0.0, 1.0], [2.0, 3.0]]
    pairs = [(1.0, 0.0), (1.0, 1.0), (2.0, 0.0), (2.0, 1.0), (2.5, 2.0), (2.5, 3.0)]  # every (teacher, sample)
    by_hand = sum(math.log1p(math.exp(-(t - s))) for t, s in pairs) / 6
    assert abs(losses.bradley_terry_loss(teacher, lined).item() - by_hand) < 1e-6
    batch = {"ids": ["p", "p", "q"], "prompt_ids": torch.tensor([[1], [1], [2]]), "prompt_rows": torch.tensor([0, 2])}
    batch["prompt_mask"] = torch.ones_like(batch["prompt_ids"])
    assert prompt_view(batch)["ids"] == ["p", "q"] and prompt_view(batch)["prompt_ids"].tolist() == [[1], [2]]
