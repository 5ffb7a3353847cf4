"""ROPD (method=ropd): the rubric reward against a hand computation, the grader's parsing and its failures over a
real 127.0.0.1 server, and the method through the real entry point on the toy world (its own toy grader server,
started by the run): training, a resume into a new folder, the export and a reload."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from chat_server import ChatServer
from conftest import ROOT, fast_overrides, run_entry

from gad import losses
from gad.config.ropd import GraderConfig
from gad.config.typed import typed
from gad.errors import GADError
from gad.ropd_grader import Grader, Group, step_metrics
from gad.ropd_rubrics import EPS, parse_rubric, parse_verdicts, rubric_reward
from gad.toy import grader as toy_grader

RUBRIC = {
    "schema_version": "ropd.rubric.v1",
    "rubrics": [
        {"criterion_id": "C1", "category": "Task Fulfillment", "criterion": "The final answer is 68.", "points": 5},
        {"criterion_id": "c2", "category": "Observable Response Quality", "criterion": "One number.", "points": 2},
        {"criterion_id": "c3", "category": "General Reasoning Quality", "criterion": "States a check.", "points": 3},
        {"criterion_id": "c4", "category": "Observable Response Quality", "criterion": "One line.", "points": 1},
    ],
    "maximum_score": 99,  # wrong on purpose: recomputed from the points, never trusted (as the official client)
}
VERDICTS = {
    "schema_version": "ropd.batch_verifier.v2",
    "answers": [
        {"answer_index": 1, "judgement": [True, True, False, True], "final_score": 0},  # final_score: ignored too
        {"answer_index": 2, "judgement": [False, True, False, True], "final_score": 3},
        {"answer_index": 3, "judgement": [False, False, False, False], "final_score": 0},
    ],
}


def test_reward_of_a_hand_written_rubric_and_judgements_is_the_hand_computation():
    rubric = parse_rubric("```json\n" + json.dumps(RUBRIC) + "\n```", min_items=4, max_items=12)
    assert [c.criterion_id for c in rubric] == ["c1", "c2", "c3", "c4"] and [c.points for c in rubric] == [5, 2, 3, 1]
    judgements = parse_verdicts(json.dumps(VERDICTS), answers=3, items=4)
    rewards = [rubric_reward([c.points for c in rubric], j) for j in judgements]
    # s_i = sum_k w_k v_ik / (sum_k w_k + eps): (5 + 2 + 1) / 11, (2 + 1) / 11, 0 / 11
    assert rewards == pytest.approx([8 / (11 + EPS), 3 / (11 + EPS), 0.0], rel=1e-12, abs=1e-12)
    # GRPO as the official config runs it (norm_adv_by_std_in_grpo: false): centred within the group only
    adv = losses.group_advantages(torch.tensor([rewards]), scale=False)
    assert torch.allclose(adv, torch.tensor([[8 / 11 - 11 / 33, 3 / 11 - 11 / 33, -11 / 33]]), atol=1e-6)
    assert losses.group_advantages(torch.zeros(1, 4), scale=False).eq(0).all()  # a failed prompt: zero advantage
    for bad, why in (
        ({**RUBRIC, "rubrics": RUBRIC["rubrics"][:3]}, "4 to 12 criteria"),
        ({**RUBRIC, "schema_version": "v0"}, "schema_version"),
        ({**RUBRIC, "rubrics": [{**RUBRIC["rubrics"][0], "points": 6}, *RUBRIC["rubrics"][1:]]}, "points"),
        ({**RUBRIC, "rubrics": [RUBRIC["rubrics"][1]] * 4}, "repeat"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_rubric(json.dumps(bad), min_items=4, max_items=12)
    with pytest.raises(ValueError, match="4 entries"):
        parse_verdicts(json.dumps(VERDICTS), answers=4, items=4)
    with pytest.raises(ValueError, match="5 booleans"):
        parse_verdicts(json.dumps(VERDICTS), answers=3, items=5)


def grader_config(**over) -> GraderConfig:
    node = {"require_api_key": False, "api_key_env": "GAD_TEST_UNSET_KEY", "model": "test-grader", **over}
    return typed(GraderConfig, node, "method.grader")


def test_malformed_replies_are_retried_then_the_prompt_gets_zero_advantage(tmp_path):
    """A real server: one prompt's rubric is never JSON, another's is JSON on the second try, a third's verdicts
    always miss an answer. parse_retries=1: two asks each; the failed prompts count in train/grader_failed."""
    asked: dict[str, int] = {}

    def reply_fn(messages):
        text = messages[-1]["content"]
        verifier = "ropd.batch_verifier.v2" in text
        task = next(t for t in ("Add: 1 2", "Sort: 3 1 2", "Max: 4 9") if t in text)
        asked[task, verifier] = asked.get((task, verifier), 0) + 1
        good = toy_grader.reply(messages)
        if task == "Add: 1 2" and not verifier:
            return "Here is your rubric: c1 ..."  # never JSON
        if task == "Sort: 3 1 2" and not verifier and asked[task, verifier] == 1:
            return good[:-5]  # cut: not JSON the first time only
        if task == "Max: 4 9" and verifier:
            data = json.loads(good)
            return json.dumps({**data, "answers": data["answers"][:-1]})  # one answer short
        return good

    groups = [
        Group("a", "user\nAdd: 1 2\nassistant\n", ["3"], ["3", "4"]),
        Group("s", "user\nSort: 3 1 2\nassistant\n", ["1 2 3"], ["1 2 3", "3 1 2"]),
        Group("m", "user\nMax: 4 9\nassistant\n", ["9"], ["9", "4"]),
    ]
    with ChatServer(reply_fn=reply_fn) as server:
        grader = Grader(grader_config(base_url=server.base_url, parse_retries=1), tmp_path)
        try:
            grading = grader.grade(groups)
            assert asked == {
                ("Add: 1 2", False): 2,
                ("Sort: 3 1 2", False): 2,
                ("Sort: 3 1 2", True): 1,
                ("Max: 4 9", False): 1,
                ("Max: 4 9", True): 2,
            }
            failed, ok, short = grading.results
            assert failed.rewards is None and failed.failed == "rubric"
            assert short.rewards is None and short.failed == "verdicts"
            assert ok.rewards == [
                9 / (9 + EPS),
                4 / (9 + EPS),
            ]  # right; wrong order (count, digits, one line) and ok.reference_rewards == [ok.rewards[0]]
            metrics = step_metrics(grading)
            assert metrics["train/grader_failed"] == 2 and metrics["train/grader_requests"] == 8
            assert metrics["train/rubric_items"] == 4
            # The module gives a failed prompt's rollouts equal rewards: zero advantage
            rewards = torch.tensor([r.rewards or [0.0, 0.0] for r in grading.results])
            assert losses.group_advantages(rewards, scale=False)[[0, 2]].eq(0).all()
            # Asked again (a resumed run): nothing is re-sent, given-up prompts stay failed (the same rewards)
            again = grader.grade(groups)
            assert again.requests == 0 and again.cached == 3 and step_metrics(again)["train/grader_failed"] == 2
        finally:
            grader.close()
    with pytest.raises(GADError, match="GAD_TEST_UNSET_KEY is not set"):
        Grader(grader_config(require_api_key=True, base_url="http://127.0.0.1:9/v1"), tmp_path)


# ---------------------------------------------------------------- method=ropd through the real entry points

SMALL = [  # conf/debug/fast.yaml less its GAD keys: 2 warm-up steps, then 2 rubric steps, 2 rollouts per prompt
    *fast_overrides("method."),
    "method.warmup_steps=2",
    "method.rubric_steps=2",
    "method.num_samples=2",
    "callbacks.step_checkpoint.every_n_steps=2",
]


def ropd_train(log_dir, dump, cache, *overrides):
    args = [f"paths.log_dir={log_dir}", f"paths.cache_dir={cache}", f"data.path={dump}", "method=ropd", *SMALL]
    proc = run_entry("train.py", *args, *overrides)
    assert proc.returncode == 0, f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return sorted((log_dir / "train" / "runs").iterdir())[-1]


def steps(run):
    return [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get("train/step")]


def weights(run):
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    path = tmp_path_factory.mktemp("dump") / "train.jsonl"
    path.write_text("".join((ROOT / "data/toy/train.jsonl").read_text().splitlines(keepends=True)[:40]))
    return path


@pytest.fixture(scope="module")
def ropd_run(tmp_path_factory, dump):
    base = tmp_path_factory.mktemp("ropd")
    return ropd_train(base / "logs", dump, base / "cache")


def test_ropd_trains_on_the_toy_world_through_its_grader_server(ropd_run):
    rows = steps(ropd_run)
    assert [float(r["train/step"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["train/phase"]) for r in rows] == [0, 0, 1, 1]  # warm-up (CE), then rubric steps
    for r in rows[2:]:
        assert float(r["train/grader_failed"]) == 0 and float(r["train/rubric_items"]) == 4
        assert float(r["train/grader_requests"]) == 8  # 4 prompts x (one rubric + one verdict request)
        assert abs(float(r["train/teacher_reward"]) - 1) < 1e-6  # the toy teacher meets its whole rubric
        assert 0 <= float(r["train/reward_mean"]) <= 1 and r["train/g_loss"]
    journal = [
        json.loads(x) for x in (ropd_run.parents[3] / "cache" / "ropd" / "grader.jsonl").read_text().splitlines()
    ]
    assert len(journal) == 16 and {x["id"][:4] for x in journal} == {"rub:", "vrd:"}
    assert (ropd_run / "student" / "config.json").is_file()  # exported


def test_ropd_resumed_into_a_new_folder_asks_nothing_again_and_ends_with_the_same_weights(ropd_run, dump, tmp_path):
    cache = ropd_run.parents[3] / "cache"
    ckpt = ropd_run / "checkpoints" / "step_000002.ckpt"
    resumed = ropd_train(tmp_path, dump, cache, f"ckpt_path={ckpt}")
    rows = steps(resumed)
    assert [float(r["train/step"]) for r in rows] == [3, 4]
    # the same rollouts (seeded by step), so every rubric and verdict comes from the journal
    assert [float(r["train/grader_requests"]) for r in rows] == [0, 0]
    assert [float(r["train/grader_cached"]) for r in rows] == [8, 8]
    a, b = weights(ropd_run), weights(resumed)
    # Bit-exact on purpose: both runs ran on this machine, the same ops in the same order from the same state.
    assert a.keys() == b.keys() and not [k for k in a if not torch.equal(a[k], b[k])]


def test_ropd_run_reloads_without_a_grader(ropd_run, dump, monkeypatch):
    from gad.runs import load_module

    monkeypatch.setenv("GAD_TRUSTED_PATHS", str(dump.parent))  # the run trained on a dump outside the project
    module = load_module(ropd_run)
    assert type(module).__name__ == "ROPDModule" and module.completed_steps == 4
    assert module.grader is None and module.toy_grader is None  # no server started, no key read, nothing asked
    assert module.reference is None  # kl_coef 0 (the official setting): no reference network


def test_ropd_misconfigured_is_one_line():
    """In this process (src/train.py turns the same GADError into one `error:` line: tests/test_config.py)."""
    from hydra import compose, initialize_config_dir

    from gad.config.validate import validate

    for override, message in (
        ("method.grader.parse_retries=-1", "method.grader.parse_retries=-1 is invalid"),
        ("method.grader.base_url=http://127.0.0.1:9/v1", "method.grader.toy_server=True is invalid"),
        ("method.grader.max_criteria=2", "method.grader.max_criteria=2 is invalid"),
        ("method.num_samples=1", "method.num_samples=1 is invalid"),
        ("+method.rubric_stepz=3", "method.rubric_stepz: unknown key"),
    ):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(
                "train", overrides=[f"paths.root_dir={ROOT}", "paths.output_dir=/tmp/x", "method=ropd", override]
            )
        with pytest.raises(GADError, match=message.replace(".", r"\.")):
            validate(cfg)
