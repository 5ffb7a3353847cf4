"""`python src/prepare.py` on small local files in each source's schema (built here; offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, assert_one_line_error, run_entry
from hydra import compose, initialize_config_dir

from gad.errors import GADError
from gad.teacher_data.prepare import normalise, prepare

TOKENIZER = str(ROOT / "data" / "toy" / "tokenizer")  # byte-level: one token per byte + the chat template


def cfg_for(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("prepare", overrides=list(overrides))


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def moderation(*flags: bool) -> list[dict]:
    return [{"categories": {"hate": f}, "category_scores": {"hate": 0.9 if f else 0.01}, "flagged": f} for f in flags]


def lmsys_row(cid: str, turns: list[str], language: str = "English", flags: tuple[bool, ...] | None = None) -> dict:
    conv = []
    for i, text in enumerate(turns):
        conv += [{"content": text, "role": "user"}, {"content": f"reply {i} to {cid}", "role": "assistant"}]
    flags = flags or (False,) * len(conv)
    return {
        "conversation_id": cid,
        "model": "vicuna-13b",
        "conversation": conv,
        "turn": len(turns),
        "language": language,
        "openai_moderation": moderation(*flags),
        "redacted": False,
    }


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture()
def lmsys_file(tmp_path) -> Path:
    rows = [lmsys_row(f"c{i:03d}", [f"Question number {i}: how do rivers form, in detail?"]) for i in range(40)]
    rows += [
        lmsys_row("es", ["¿Cómo se forman los ríos?"], language="Spanish"),
        lmsys_row("flag1", ["a hateful first question"], flags=(True, False)),
        lmsys_row("flag2", ["a fine first question", "a hateful follow-up"], flags=(False, False, True, False)),
        lmsys_row("multi", ["first turn of a chat", "second turn of a chat"]),
        lmsys_row("empty", ["   \n "]),
        lmsys_row("redacted", ["NAME_1 NAME_2, EMAIL_1!"]),
        lmsys_row("dup-exact", ["Question number 3: how do rivers form, in detail?"]),
        lmsys_row("dup-norm", ["question NUMBER 4 -- how do rivers form in detail"]),
        lmsys_row("long", ["word " * 400]),
        {
            "conversation_id": "broken",
            "model": "x",
            "conversation": [{"content": "no role"}],
            "turn": 1,
            "language": "English",
            "openai_moderation": moderation(False),
            "redacted": False,
        },
        {
            "conversation_id": "no-user",
            "model": "x",
            "conversation": [{"content": "only an answer", "role": "assistant"}],
            "turn": 1,
            "language": "English",
            "openai_moderation": moderation(False),
            "redacted": False,
        },
    ]
    return write_parquet(tmp_path / "lmsys" / "train-00000-of-00001.parquet", rows)


def run(tmp_path, *overrides: str, out: str = "out"):
    cfg = cfg_for(f"out_dir={tmp_path / out}", *overrides)
    return prepare(cfg), tmp_path / out


def test_lmsys_every_filter_is_counted_and_splits_are_disjoint(tmp_path, lmsys_file, capsys):
    result, out = run(
        tmp_path,
        "source.kind=lmsys",
        f"source.path={lmsys_file.parent}",
        f"filters.tokenizer={TOKENIZER}",
        "filters.max_prompt_tokens=400",
        "sample.test_size=5",
        "sample.n=100",
    )
    dropped = result.reports[0].dropped
    assert dict(dropped) == {
        "language": 1,
        "moderation flagged": 1,
        "malformed row": 1,
        "no user turn": 1,
        "empty prompt": 1,
        "redacted only": 1,
        "duplicate (exact)": 1,
        "duplicate (normalised)": 1,
        "too many tokens": 1,
    }
    assert result.reports[0].rows == 51 and result.reports[0].kept == 42
    train, test = read(out / "train.jsonl"), read(out / "test.jsonl")
    assert len(test) == 5 and len(train) == 37
    assert not {normalise(json.dumps(r["messages"])) for r in train} & {
        normalise(json.dumps(r["messages"])) for r in test
    }
    by_id = {r["id"]: r for r in train + test}
    assert by_id["multi"]["messages"] == [{"role": "user", "content": "first turn of a chat"}]  # turns=first
    assert "flag2" in by_id  # flagged only in a later turn, which turns=first does not keep
    assert all(
        "response" not in r and r["meta"]["source"] == "lmsys" and r["meta"]["language"] == "English" for r in train
    )
    printed = capsys.readouterr().out
    for label in (
        "language",
        "moderation flagged",
        "redacted only",
        "duplicate (normalised)",
        "too many tokens",
        "train.jsonl",
    ):
        assert label in printed


def test_sampling_is_deterministic_stable_and_seeded(tmp_path, lmsys_file):
    common = ["source.kind=lmsys", f"source.path={lmsys_file}", "sample.test_size=5"]
    run(tmp_path, *common, "sample.n=20", out="a")
    run(tmp_path, *common, "sample.n=20", out="b")
    run(tmp_path, *common, "sample.n=30", out="c")
    run(tmp_path, *common, "sample.n=20", "sample.seed=1", out="d")
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "b" / "train.jsonl").read_bytes()
    assert (tmp_path / "a" / "test.jsonl").read_bytes() == (
        tmp_path / "c" / "test.jsonl"
    ).read_bytes()  # test never moves
    ids = lambda d, s: [r["id"] for r in read(tmp_path / d / f"{s}.jsonl")]  # noqa: E731
    assert set(ids("a", "train")) < set(ids("c", "train"))  # a larger n only adds prompts
    assert ids("d", "test") != ids("a", "test")


def test_whole_context_keeps_turns_up_to_the_last_user_turn(tmp_path, lmsys_file):
    result, out = run(
        tmp_path,
        "source.kind=lmsys",
        f"source.path={lmsys_file}",
        "filters.turns=all",
        "sample.test_size=0",
        "filters.language=null",
        "filters.drop_flagged=false",
    )
    by_id = {r["id"]: r for r in read(out / "train.jsonl")}
    assert [m["role"] for m in by_id["multi"]["messages"]] == ["user", "assistant", "user"]
    assert by_id["multi"]["messages"][-1]["content"] == "second turn of a chat"
    assert "es" in by_id and "flag1" in by_id
    assert "language" not in result.reports[0].dropped and "moderation flagged" not in result.reports[0].dropped


def test_lmsys_clean_sharegpt_schema_and_flaw_filter(tmp_path):
    rows = [
        {
            "id": f"k{i}",
            "conversations": [{"from": "human", "value": f"prompt {i}"}, {"from": "gpt", "value": "answer"}],
            "category": "coding",
            "flaw": "normal" if i % 4 else "incomplete",
        }
        for i in range(12)
    ]
    path = tmp_path / "clean.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result, out = run(
        tmp_path, "source.kind=lmsys_clean", f"source.path={path}", "filters.keep_flaws=[normal]", "sample.test_size=2"
    )
    assert result.reports[0].dropped == {"flaw": 3}
    records = read(out / "train.jsonl") + read(out / "test.jsonl")
    assert len(records) == 9 and all(r["id"].startswith("k") and r["meta"]["category"] == "coding" for r in records)
    assert records[0]["messages"][0]["role"] == "user" and len(records[0]["messages"]) == 1


def test_gad_release_is_imported_with_responses_and_its_own_test_split(tmp_path):
    def rows(split, n):
        return [
            {"content": [{"role": "user", "content": f"{split} prompt {i}"}], "teacher_response": f"GPT-5 says {i}"}
            for i in range(n)
        ]

    data = tmp_path / "release" / "data"
    write_parquet(
        data / "train-00000-of-00001.parquet",
        rows("train", 30)
        + [{"content": [{"role": "user", "content": "test prompt 0"}], "teacher_response": "dup of a test prompt"}],
    )
    write_parquet(data / "test-00000-of-00001.parquet", rows("test", 7))
    from gad.data.records import read_records

    result, out = run(tmp_path, "source.kind=gad_release", f"source.path={tmp_path / 'release'}", "sample.n=null")
    train, report = read_records(out / "train.jsonl")  # a ready training dump: responses included
    test = read(out / "test.jsonl")
    assert report.kept == 30 and len(test) == 7
    assert all(r["teacher"] == "gpt-5-chat" and r["response"].startswith("GPT-5 says") for r in train)
    assert {r["messages"][0]["content"] for r in test} == {f"test prompt {i}" for i in range(7)}
    assert result.reports[0].dropped == {"duplicate (exact)": 1}  # the train copy of a test prompt
    assert [r.name for r in result.reports] == ["train split", "test split"]


def test_local_prompts_with_a_text_column_get_stable_ids(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Tell me about topic {i}"}) + "\n" for i in range(6)))
    _, out = run(tmp_path, "source.kind=local", f"source.path={path}", "sample.test_size=1")
    first = read(out / "train.jsonl") + read(out / "test.jsonl")
    _, out2 = run(tmp_path, "source.kind=local", f"source.path={path}", "sample.test_size=1", out="again")
    assert [r["id"] for r in first] == [r["id"] for r in read(out2 / "train.jsonl") + read(out2 / "test.jsonl")]
    assert len({r["id"] for r in first}) == 6 and all(r["id"].startswith("h-") for r in first)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["source.kind=reddit"], "source.kind=reddit is invalid: must be one of"),
        (
            ["source.kind=local", "source.path=/no/such/file.jsonl"],
            "source.path=/no/such/file.jsonl is invalid: no such file or folder",
        ),
        (["filters.max_prompt_tokens=100"], "filters.tokenizer: must name a tokenizer"),
        (["filters.turns=last"], "filters.turns=last is invalid: must be first or all"),
        (["sample.test_size=-1"], "sample.test_size=-1 is invalid: must be >= 0"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path, overrides, fragment):
    with pytest.raises(GADError, match=fragment.replace(".", r"\.")):
        prepare(cfg_for(f"out_dir={tmp_path}", *overrides))


def test_unloadable_tokenizer_is_one_line(tmp_path, lmsys_file):
    with pytest.raises(GADError, match="filters.tokenizer: cannot load tokenizer"):
        prepare(
            cfg_for(
                f"out_dir={tmp_path}",
                "source.kind=lmsys",
                f"source.path={lmsys_file}",
                f"filters.tokenizer={tmp_path}",
                "filters.max_prompt_tokens=10",
            )
        )


def test_offline_hub_source_fails_at_once_with_one_line(tmp_path):
    proc = run_entry(
        "prepare.py", "source.kind=lmsys", f"out_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'h'}", timeout=60
    )
    assert_one_line_error(proc, "lmsys/lmsys-chat-1m", "offline")
    assert not (tmp_path / "train.jsonl").exists()


def test_a_successful_prepare_exits_0_and_says_what_it_wrote(tmp_path):
    """The entry script, as `prepare && collect` runs it: exit 0, the report on stdout, nothing on stderr
    (it used to print the whole result object to stderr and exit 1)."""
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Tell me about topic {i}"}) + "\n" for i in range(6)))
    out = tmp_path / "out"
    proc = run_entry(
        "prepare.py",
        "source.kind=local",
        f"source.path={path}",
        "sample.test_size=1",
        f"out_dir={out}",
        f"hydra.run.dir={tmp_path / 'h'}",
        env={"COLUMNS": "400"},  # the line naming both paths is not wrapped
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == ""
    assert f"wrote {out / 'train.jsonl'} (5) and {out / 'test.jsonl'} (1)" in " ".join(proc.stdout.split())
    assert len(read(out / "train.jsonl")) == 5 and len(read(out / "test.jsonl")) == 1
