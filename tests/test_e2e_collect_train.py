"""End to end: prepare -> collect (from a loopback teacher) -> `python src/train.py` on the collected dump.

prepare and collect run in this process on the composed real configs (their entry scripts are
exercised by test_prepare.py and by the SIGKILL test in test_collect.py); training runs the real
entry script for a few steps of every phase.
"""

from __future__ import annotations

import csv
import json

import pytest
from chat_server import ChatServer
from conftest import ROOT, train
from hydra import compose, initialize_config_dir

pytestmark = pytest.mark.skipif(not (ROOT / "src" / "train.py").exists(), reason="src/train.py not there yet")


def composed(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def test_prepare_collect_train(tmp_path, monkeypatch):
    from gad.teacher_data.collect import collect
    from gad.teacher_data.prepare import prepare

    source = tmp_path / "clean.jsonl"  # OpenLeecher/lmsys_chat_1m_clean schema (ShareGPT turns)
    with open(source, "w") as fh:
        for i in range(48):
            fh.write(
                json.dumps(
                    {
                        "id": f"k{i:02d}",
                        "conversations": [
                            {"from": "human", "value": f"Add: {i} {i + 1}"},
                            {"from": "gpt", "value": "..."},
                        ],
                    }
                )
                + "\n"
            )
    result = prepare(
        composed(
            "prepare",
            "source.kind=lmsys_clean",
            f"source.path={source}",
            f"out_dir={tmp_path / 'data'}",
            "sample.test_size=8",
        )
    )
    assert len(result.train) == 40 and len(result.test) == 8

    dump = tmp_path / "data" / "teacher.jsonl"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-e2e")
    with ChatServer(script={"Add: 7 ": ["500"], "Add: 9 ": ["refuse"]}) as server:
        status = collect(
            composed(
                "collect",
                f"prompts={tmp_path / 'data' / 'train.jsonl'}",
                f"output={dump}",
                f"teacher.base_url={server.base_url}",
                "teacher.model=toy-teacher",
                "teacher.concurrency=8",
                "teacher.backoff_initial_s=0.01",
                "progress=false",
            )
        )
    assert status == 0
    records = [json.loads(line) for line in dump.read_text().splitlines()]
    train_ids = {r["id"] for r in result.train}
    assert len(records) == 39 and {r["id"] for r in records} <= train_ids  # 40 train prompts, 1 refused
    assert all(r["teacher"] == "toy-teacher" for r in records)

    run = train(tmp_path / "logs", f"data.path={dump}", "data.val_size=4")
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    steps = [r for r in rows if r.get("train/step")]
    assert len(steps) == 6 and all(r["train/d_loss"] != "" for r in steps)  # every warm-up and adversarial step
