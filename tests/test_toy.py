"""The toy world: checker, generated splits, determinism of the shipped files, tokenizer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gad.data.records import read_records
from gad.errors import GADError
from gad.toy.build import SPLIT_FILES, TOKENIZER_DIR, TWO_TEACHERS_DIR, main
from gad.toy.check import accuracy, check
from gad.toy.tasks import (
    ID_RANGES,
    OOD_RANGES,
    SECOND_TEACHER,
    TASKS,
    TEACHER,
    Rng,
    format_prompt,
    in_ranges,
    in_style,
    solve,
)
from gad.toy.tokenizer import IM_END_ID, IM_START_ID, PAD_ID, VOCAB_SIZE, build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "data" / "toy"
SIZES = {"train.jsonl": 4000, "test_id.jsonl": 200, "test_ood.jsonl": 200}


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return {name: read_records(TOY / name)[0] for name in SPLIT_FILES}


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def prompt(record: dict) -> str:
    return record["messages"][-1]["content"]


# --- checker ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "args", "answer"),
    [
        ("add", {"a": 23, "b": 45}, "68"),
        ("add", {"a": 999, "b": 999}, "1998"),
        ("reverse", {"items": [3, 7, 1]}, "1 7 3"),
        ("sort", {"items": [3, 7, 1, 7]}, "1 3 7 7"),
        ("max", {"items": [3, 7, 1]}, "7"),
        ("count", {"char": "a", "word": "abcab"}, "2"),
        ("count", {"char": "d", "word": "abc"}, "0"),
    ],
)
def test_teacher_answers_hand_examples(task, args, answer):
    assert solve(task, args) == answer


def test_prompt_format_hand_examples():
    assert format_prompt("add", {"a": 23, "b": 45}) == "Add: 23 45"
    assert format_prompt("reverse", {"items": [3, 7, 1]}) == "Reverse: 3 7 1"
    assert format_prompt("sort", {"items": [3, 7, 1]}) == "Sort: 3 7 1"
    assert format_prompt("max", {"items": [3, 7, 1]}) == "Max: 3 7 1"
    assert format_prompt("count", {"char": "a", "word": "abcab"}) == "Count a in abcab"


def test_check_correct_wrong_and_whitespace():
    meta = {"task": "reverse", "args": {"items": [3, 7, 1]}, "answer": "1 7 3"}
    assert check(meta, "1 7 3")
    assert check(meta, "  1 7 3\n")  # surrounding whitespace is tolerated
    assert check(meta, "\t1 7 3 ")
    assert not check(meta, "1 3 7")  # wrong order
    assert not check(meta, "1 7  3")  # inner whitespace is not
    assert not check(meta, "173")
    assert not check(meta, "1 7 3.")
    assert not check(meta, "")
    assert not check(meta, None)
    add = {"task": "add", "args": {"a": 23, "b": 45}, "answer": "68"}
    assert check(add, "68") and not check(add, "67") and not check(add, "068") and not check(add, "68 68")


def test_check_without_stored_answer_uses_rules():
    assert check({"task": "max", "args": {"items": [2, 9, 4]}}, " 9 ")
    assert not check({"task": "max", "args": {"items": [2, 9, 4]}}, "4")
    with pytest.raises(GADError):
        check({"task": "divide", "args": {}}, "1")
    with pytest.raises(GADError):
        check({}, "1")


def test_accuracy():
    records = [
        {"meta": {"task": "add", "args": {"a": 1, "b": 2}, "answer": "3"}},
        {"meta": {"task": "max", "args": {"items": [1, 5]}, "answer": "5"}},
        {"meta": {"task": "sort", "args": {"items": [2, 1]}, "answer": "1 2"}},
        {"meta": {"task": "count", "args": {"char": "a", "word": "aa"}, "answer": "2"}},
    ]
    assert accuracy(records, ["3", "5 ", "2 1", None]) == 0.5
    assert accuracy(records, ["3", "5", "1 2", "2"]) == 1.0
    assert accuracy([], []) == 0.0
    with pytest.raises(GADError):
        accuracy(records, ["3"])


def test_rng_is_splitmix64():
    # reference output of SplitMix64 seeded with 0
    assert Rng(0).next64() == 0xE220A8397B1DCDAF
    a, b = Rng(7), Rng(7)
    assert [a.randint(0, 9) for _ in range(50)] == [b.randint(0, 9) for _ in range(50)]


# --- shipped data -------------------------------------------------------------------------


def test_shipped_splits_load_with_expected_shape(splits):
    for name, records in splits.items():
        assert len(records) == SIZES[name], name
        stem = name.removesuffix(".jsonl")
        for i, r in enumerate(records):
            assert r["id"] == f"toy-{stem}-{i:06d}"
            assert r["teacher"] == TEACHER
            assert [m["role"] for m in r["messages"]] == ["user"]
        counts = {t: sum(r["meta"]["task"] == t for r in records) for t in TASKS}
        assert counts == {t: SIZES[name] // len(TASKS) for t in TASKS}, (name, counts)


def test_every_teacher_response_passes_its_checker(splits):
    for _name, records in splits.items():
        for r in records:
            meta = r["meta"]
            assert r["response"] == meta["answer"] == solve(meta["task"], meta["args"]), r["id"]
            assert prompt(r) == format_prompt(meta["task"], meta["args"]), r["id"]
            assert check(meta, r["response"]), r["id"]
        assert accuracy(records, [r["response"] for r in records]) == 1.0


def test_prompts_and_answers_are_short(splits):
    for records in splits.values():
        assert max(len(prompt(r)) for r in records) <= 40
        assert max(len(r["response"]) for r in records) <= 20
        assert all(re.fullmatch(r"[0-9]+( [0-9]+)*", r["response"]) for r in records)


def test_test_splits_disjoint_from_train(splits):
    train = {prompt(r) for r in splits["train.jsonl"]}
    assert len(train) == SIZES["train.jsonl"]  # prompts are distinct within a split
    for name in ("test_id.jsonl", "test_ood.jsonl"):
        test = {prompt(r) for r in splits[name]}
        assert len(test) == SIZES[name]
        assert not train & test, name


def test_ood_is_outside_id_ranges(splits):
    for name in ("train.jsonl", "test_id.jsonl"):
        for r in splits[name]:
            m = r["meta"]
            assert m["dist"] == "id" and in_ranges(m["task"], m["args"], ID_RANGES), r["id"]
    for r in splits["test_ood.jsonl"]:
        m = r["meta"]
        assert m["dist"] == "ood", r["id"]
        assert in_ranges(m["task"], m["args"], OOD_RANGES), r["id"]
        assert not in_ranges(m["task"], m["args"], ID_RANGES), r["id"]
    # the range check itself discriminates
    assert in_ranges("add", {"a": 99, "b": 0}, ID_RANGES) and not in_ranges("add", {"a": 100, "b": 0}, ID_RANGES)
    assert not in_ranges("sort", {"items": [1, 2, 3, 4, 5]}, ID_RANGES)
    assert not in_ranges("count", {"char": "a", "word": "abcdabc"}, ID_RANGES)


def test_regeneration_is_byte_identical(tmp_path):
    main(["--out", str(tmp_path)])
    shipped = sorted(p.relative_to(TOY) for p in TOY.rglob("*") if p.is_file() and p.name != "README.md")
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert shipped == fresh
    assert {Path(f) for f in SPLIT_FILES} <= set(fresh) and any(p.parts[0] == TOKENIZER_DIR for p in fresh)
    for rel in fresh:
        assert (tmp_path / rel).read_bytes() == (TOY / rel).read_bytes(), f"{rel} differs: run python -m gad.toy"
    total = sum(p.stat().st_size for p in TOY.rglob("*") if p.is_file())
    assert total < 1_500_000


# --- tokenizer ----------------------------------------------------------------------------


def test_tokenizer_special_tokens(tok):
    assert len(tok) == VOCAB_SIZE == 259
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == PAD_ID == 256
    assert tok.convert_tokens_to_ids("<|im_start|>") == IM_START_ID == 257
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == IM_END_ID == 258
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "left"
    assert tok.encode("Add: 1 2") == list(b"Add: 1 2")  # one token per byte, no BOS


@pytest.mark.parametrize(
    "text", ["Reverse: 3 7 1", "  leading and trailing  ", "héllo wörld", "你好, 🎉!", "a\tb\n\nc", "ÿ\x00\x7f"]
)
def test_tokenizer_round_trips_unicode(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_chat_template(tok):
    msgs = [{"role": "user", "content": "Max: 3 7 1"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nMax: 3 7 1<|im_end|>\n<|im_start|>assistant\n"  # no default system prompt
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids[-len("assistant\n") - 1 :] == [IM_START_ID] + list(b"assistant\n")
    sys_text = tok.apply_chat_template([{"role": "system", "content": "S"}] + msgs, tokenize=False)
    assert sys_text.startswith("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n")


def test_assistant_tokens_mask_covers_response_and_eos(tok):
    msgs = [{"role": "user", "content": "Max: 3 7 1"}, {"role": "assistant", "content": "7"}]
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    learnt = [i for i, m in zip(ids, mask) if m]
    assert learnt == list(b"7") + [IM_END_ID]
    prefix = tok.apply_chat_template(msgs[:1], add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids[: len(prefix)] == prefix and not any(mask[: len(prefix)])


def test_tokenizer_save_reload_round_trip(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(str(tmp_path))
    for path in (tmp_path, TOY / TOKENIZER_DIR):
        again = AutoTokenizer.from_pretrained(str(path))
        assert again.chat_template == tok.chat_template
        assert again.padding_side == "left"
        assert (again.pad_token_id, again.eos_token_id) == (PAD_ID, IM_END_ID)
        assert again.convert_tokens_to_ids("<|im_start|>") == IM_START_ID
        assert len(again) == VOCAB_SIZE
        text = "Count a in abcab ✓"
        assert again.encode(text) == tok.encode(text) and again.decode(again.encode(text)) == text
        batch = again(["ab", "abcd"], padding=True)
        assert batch["input_ids"][0][:2] == [PAD_ID, PAD_ID] and batch["attention_mask"][0] == [0, 0, 1, 1]
        assert again.decode([IM_START_ID, *b"x", IM_END_ID], skip_special_tokens=True) == "x"


# --- two teachers -------------------------------------------------------------------------


def test_second_teacher_writes_another_style_that_the_checker_accepts():
    meta = {"task": "reverse", "args": {"items": [3, 7, 1]}, "answer": "1 7 3"}
    assert in_style("1 7 3", SECOND_TEACHER) == "Answer: 1 7 3" and in_style("1 7 3", TEACHER) == "1 7 3"
    assert check(meta, "Answer: 1 7 3") and check(meta, " Answer: 1 7 3\n") and check(meta, "1 7 3")
    for wrong in ("Answer: 1 3 7", "Answer:1 7 3", "answer: 1 7 3", "Answer: 1 7 3.", "Answer: Answer: 1 7 3"):
        assert not check(meta, wrong), wrong
    with pytest.raises(GADError, match="unknown toy teacher"):
        in_style("1", "nobody")


def test_two_teacher_dump_is_regenerated_byte_for_byte_and_pairs_every_train_prompt(tmp_path, splits):
    main(["--two-teachers", "--out", str(tmp_path)])
    shipped = ROOT / "data" / TWO_TEACHERS_DIR / "train.jsonl"
    assert (tmp_path / "train.jsonl").read_bytes() == shipped.read_bytes(), "run python -m gad.toy --two-teachers"
    records, _ = read_records(shipped)
    train = {r["id"]: r for r in splits["train.jsonl"]}
    assert len(records) == 2 * len(train) == 8000
    for r in records:
        prompt = train[r["id"]]
        assert r["messages"] == prompt["messages"] and check(prompt["meta"], r["response"])
        assert r["response"] == in_style(prompt["response"], r["teacher"])
    assert {r["teacher"] for r in records} == {TEACHER, SECOND_TEACHER}
