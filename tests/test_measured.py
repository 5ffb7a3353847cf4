"""bench/measured.py: what a benchmark's `--write` puts in docs/measured/<name>.md."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import measured  # noqa: E402


@pytest.fixture
def out_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(measured, "OUT_DIR", tmp_path)
    monkeypatch.setattr(sys, "argv", [str(measured.ROOT / "bench" / "bench_x.py"), "--steps", "2", "--write"])
    return tmp_path


def test_write_records_the_printed_output_with_command_commit_and_machine(out_dir, capsys):
    stdout = sys.stdout
    with measured.record("A title", "x", write=True) as rec:
        print("plain line")
        table = Table(title="a table")
        table.add_column("section")
        table.add_column("ms", justify="right")
        table.add_row("rollout", "1.5")
        Console().print(table)
        rec.fact("device used", "cpu")
    assert sys.stdout is stdout
    printed = capsys.readouterr().out
    assert "plain line" in printed and "rollout" in printed  # still printed as without --write
    text = (out_dir / "x.md").read_text()
    lines = text.splitlines()
    assert lines[0] == "# A title"
    assert "`python bench/bench_x.py --steps 2 --write`" in text
    for fact in ("- date: ", "- commit: ", "- CPU: ", "- torch threads: ", "- CUDA devices: ", "- torch: "):
        assert fact in text
    assert "- transformers: " in text and "- device used: cpu" in text and "- load average at start" in text
    block = text.split("```text\n", 1)[1].split("\n```\n", 1)[0]
    assert block.splitlines()[0] == "plain line"
    assert "│ rollout │" in block and "a table" in block
    assert "\x1b" not in text and all(line == line.rstrip() for line in lines)
    assert lines[-1] == "Re-run the command to refresh this file; do not edit it by hand."


def test_without_write_nothing_is_written(out_dir, capsys):
    with measured.record("A title", "x", write=False):
        print("plain line")
    assert capsys.readouterr().out == "plain line\n"
    assert not (out_dir / "x.md").exists()


def test_a_failing_block_writes_nothing(out_dir):
    stdout = sys.stdout
    with pytest.raises(RuntimeError), measured.record("A title", "x", write=True):
        print("partial")
        raise RuntimeError("boom")
    assert sys.stdout is stdout
    assert not (out_dir / "x.md").exists()


def test_render_fences_output_that_holds_backticks():
    text = measured.render("T", "python bench/b.py", "a\n```\nb", {"CPU": "1"})
    assert "````text\na\n```\nb\n````" in text
