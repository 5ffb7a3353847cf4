"""End to end through the real entry scripts: prepare -> collect (from a loopback teacher) -> train."""

from __future__ import annotations

import csv
import json

import pytest
from chat_server import ChatServer
from conftest import ROOT, run_entry, train

pytestmark = pytest.mark.skipif(not (ROOT / "src" / "train.py").exists(), reason="src/train.py not there yet")


def test_prepare_collect_train(tmp_path):
    source = tmp_path / "clean.jsonl"  # OpenLeecher/lmsys_chat_1m_clean schema (ShareGPT turns)
    with open(source, "w") as fh:
        for i in range(48):
            fh.write(json.dumps({"id": f"k{i:02d}", "conversations": [{"from": "human", "value": f"Add: {i} {i + 1}"},
                                                                        {"from": "gpt", "value": "..."}]}) + "\n")
    prep = run_entry("prepare.py", "source.kind=lmsys_clean", f"source.path={source}", f"out_dir={tmp_path / 'data'}",
                     "sample.test_size=8", f"hydra.run.dir={tmp_path / 'h1'}")
    assert prep.returncode == 0, prep.stderr[-2000:]
    assert "train.jsonl" in prep.stdout

    dump = tmp_path / "data" / "teacher.jsonl"
    with ChatServer(script={"Add: 7 ": ["500"], "Add: 9 ": ["refuse"]}) as server:
        col = run_entry("collect.py", f"prompts={tmp_path / 'data' / 'train.jsonl'}", f"output={dump}",
                        f"teacher.base_url={server.base_url}", "teacher.model=toy-teacher", "teacher.concurrency=8",
                        "teacher.backoff_initial_s=0.01", "progress=false", f"hydra.run.dir={tmp_path / 'h2'}",
                        env={"OPENAI_API_KEY": "sk-test-e2e"})
    assert col.returncode == 0, col.stderr[-2000:]
    records = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(records) == 39 and all(r["teacher"] == "toy-teacher" for r in records)  # 40 train prompts, 1 refused

    run = train(tmp_path / "logs", f"data.path={dump}", "data.val_size=4")
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert any(r.get("train/d_loss") for r in rows)
