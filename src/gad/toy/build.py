"""Regenerate the shipped toy world (`data/toy/`) deterministically.

    python -m gad.toy [--out DIR]
    python -m gad.toy --two-teachers [--out DIR]

writes train.jsonl (4000), test_id.jsonl (200), test_ood.jsonl (200) and tokenizer/.
With --two-teachers it writes only the two-teacher dump instead (default `data/toy_two_teachers/train.jsonl`,
conf/data/toy_two_teachers.yaml): each train prompt answered by both rule-based teachers, toy-rules ("68")
and toy-rules-labelled ("Answer: 68"), 8000 records with the train ids and prompts, without `meta` (training
does not read it; the test splits keep theirs). Running either twice gives byte-identical files; the tests
compare the shipped files with a fresh regeneration.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gad.data.records import write_jsonl
from gad.toy.tasks import SECOND_TEACHER, TEACHER, generate, in_style

N_TRAIN = 4000
N_TEST = 200
SEEDS = {"test_id": 1001, "test_ood": 2002, "train": 3003}
SPLIT_FILES = ("train.jsonl", "test_id.jsonl", "test_ood.jsonl")
TOKENIZER_DIR = "tokenizer"
TWO_TEACHERS_DIR = "toy_two_teachers"


def default_out_dir() -> Path:
    """`data/toy` of the source checkout this package lives in, else of the current folder."""
    root = Path(__file__).resolve().parents[3]
    if (root / "pyproject.toml").is_file() and (root / "src" / "gad").is_dir():
        return root / "data" / "toy"
    return Path.cwd() / "data" / "toy"


def default_two_teachers_dir() -> Path:
    """`data/toy_two_teachers` beside `data/toy`."""
    return default_out_dir().parent / TWO_TEACHERS_DIR


def two_teacher_records(train: list[dict]) -> list[dict]:
    """Every train prompt answered by both rule-based teachers, a prompt's two records side by side."""
    return [
        {"id": r["id"], "messages": r["messages"], "response": in_style(r["meta"]["answer"], t), "teacher": t}
        for r in train
        for t in (TEACHER, SECOND_TEACHER)
    ]


def build_two_teachers(out_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    out = Path(out_dir) if out_dir is not None else default_two_teachers_dir()
    path = out / "train.jsonl"
    write_jsonl(two_teacher_records(build_splits()["train"]), path)
    return {"train": path}


def build_splits(n_train: int = N_TRAIN, n_test: int = N_TEST) -> dict[str, list[dict]]:
    """The three splits; test prompts are drawn first and kept out of train."""
    test_id = generate("test_id", n_test, SEEDS["test_id"])
    test_ood = generate("test_ood", n_test, SEEDS["test_ood"], ood=True)
    held_out = [r["messages"][-1]["content"] for r in test_id + test_ood]
    train = generate("train", n_train, SEEDS["train"], exclude=held_out)
    return {"train": train, "test_id": test_id, "test_ood": test_ood}


def build(out_dir: str | os.PathLike | None = None, *, tokenizer: bool = True) -> dict[str, Path]:
    """Write the splits (and the tokenizer) under `out_dir`; returns name -> path."""
    from gad.toy.tokenizer import build_tokenizer

    out = Path(out_dir) if out_dir is not None else default_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, records in build_splits().items():
        path = out / f"{name}.jsonl"
        write_jsonl(records, path)
        written[name] = path
    if tokenizer:
        tok_dir = out / TOKENIZER_DIR
        build_tokenizer().save_pretrained(str(tok_dir))
        written["tokenizer"] = tok_dir
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gad.toy", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output folder (default: data/toy of the checkout)")
    parser.add_argument(
        "--two-teachers", action="store_true", help="write the two-teacher dump instead (default data/toy_two_teachers)"
    )
    args = parser.parse_args(argv)
    for name, path in (build_two_teachers(args.out) if args.two_teachers else build(args.out)).items():
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
        print(f"{name:10s} {path}  ({size:,} bytes)")
