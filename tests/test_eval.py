"""`python src/eval.py` on the toy world against a deterministic judge on 127.0.0.1.

One short training run (module fixture) gives the models: `init:<run>` (before training), the run
(last.ckpt) and its exported `student/`. The judge server answers reference requests with a fixed
text and rates each answer by its length, with a +1 bonus for whoever is Assistant 1 (a position
bias the both-orders average must cancel); one verdict always comes back without scores.
Every summary number is recomputed here independently from the per-prompt outputs.
"""

from __future__ import annotations

import csv
import json
import math
import re

import lightning as L
import numpy as np
import pytest
import torch
from chat_server import ChatServer
from conftest import ROOT, assert_one_line_error, run_entry
from transformers import AutoModelForCausalLM, AutoTokenizer

from gad.data.datamodule import validation_split
from gad.data.records import read_records
from gad.errors import GADError
from gad.evaluation import length_control as lc
from gad.evaluation.judge import PAIR_TEMPLATE, parse_verdict
from gad.evaluation.metrics import ngram_f1, tokens
from gad.evaluation.model_specs import load_model_for, resolve_spec
from gad.evaluation.select import pick_best
from gad.fit import build_module
from gad.runs import run_config
from gad.toy.check import check

SENTINEL = "sk-evaltest-SENTINEL-0123456789abcdef"
KEY_ENV = "GAD_EVAL_TEST_KEY"
LIMIT = 8
PARSE_RETRIES = 2
ID_SPLIT, OOD_SPLIT = ROOT / "data/toy/test_id.jsonl", ROOT / "data/toy/test_ood.jsonl"
UNPARSEABLE_Q = read_records(ID_SPLIT)[0][0]["messages"][-1]["content"]  # "Add: 36 4"
PAIR = re.compile(
    r"^\[Question\]\n(?P<q>.*)\n\n\[The Start of Assistant 1's Answer\]\n(?P<a1>.*)\n\n\[The End of Assistant 1's Answer\]"
    r"\n\n\[The Start of Assistant 2's Answer\]\n(?P<a2>.*)\n\n\[The End of Assistant 2's Answer\]\n\n\[System\]\n",
    re.S,
)


def reference_for(question: str) -> str:
    return f"The judge answers: {question}"


def points(answer: str) -> int:
    """The deterministic judge's rating of an answer: longer is better (1..9)."""
    return 1 + min(len(answer), 40) // 5


def judge_reply(messages: list[dict]) -> str:
    user = messages[-1]["content"]
    m = PAIR.match(user)
    if m is None:  # a reference request: the prompt itself
        return reference_for(user)
    q, a1, a2 = m["q"], m["a1"], m["a2"]
    if q == UNPARSEABLE_Q and a1 == reference_for(q):  # reference shown first: never a score line
        return "Both assistants tried hard.\nNo numbers here."
    return f"{points(a1) + 1} {points(a2)}\nAssistant 1 was shown first."


@pytest.fixture(scope="module")
def run(toy_run):
    return toy_run  # shared with the other files that only read it (conftest.toy_run)


@pytest.fixture(scope="module")
def server():
    with ChatServer(api_key=SENTINEL, reply_fn=judge_reply) as srv:
        yield srv


def judge_args(server, **extra) -> list[str]:
    args = {
        "judge.base_url": server.base_url,
        "judge.model": "test-judge",
        "judge.api_key_env": KEY_ENV,
        "judge.parse_retries": PARSE_RETRIES,
        "judge.backoff_initial_s": 0.01,
        "judge.backoff_max_s": 0.02,
        "judge.concurrency": 8,
        **extra,
    }
    return ["judge=gpt4o", *[f"{k}={v}" for k, v in args.items()]]


def eval_cmd(log_dir, *args, env=None):
    return run_entry(
        "eval.py", f"paths.log_dir={log_dir}", "progress=false", *args, env={KEY_ENV: SENTINEL, **(env or {})}
    )


def out_dir(proc) -> Path:  # noqa: F821
    from pathlib import Path

    return Path(re.search(r"^outputs: (.+)$", proc.stdout, re.M).group(1))


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


# ------------------------------------------------------------------------------------ main test
@pytest.fixture(scope="module")
def evaluated(run, server, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("eval")
    models = f"models={{before: 'init:{run}', after: '{run}', export: '{run}/student'}}"
    sets = f"prompt_sets={{in_dist: '{ID_SPLIT}', out_of_dist: '{OOD_SPLIT}'}}"
    args = [models, sets, f"limit={LIMIT}", *judge_args(server)]
    start = len(server.requests)
    first = eval_cmd(log_dir, *args)
    assert first.returncode == 0, first.stderr[-3000:]
    requests_first = len(server.requests) - start
    second = eval_cmd(log_dir, *args)
    assert second.returncode == 0, second.stderr[-3000:]
    requests_second = len(server.requests) - start - requests_first
    return {
        "log_dir": log_dir,
        "first": first,
        "second": second,
        "out": out_dir(first),
        "out2": out_dir(second),
        "requests_first": requests_first,
        "requests_second": requests_second,
    }


def summary_rows(out) -> dict[tuple[str, str], dict]:
    return {(r["model"], r["set"]): r for r in json.loads((out / "summary.json").read_text())["rows"]}


def test_outputs_exist_and_csv_matches_json(evaluated):
    out = evaluated["out"]
    rows = summary_rows(out)
    assert set(rows) == {(m, s) for m in ("before", "after", "export") for s in ("in_dist", "out_of_dist")}
    for model, set_name in rows:
        assert len(read_jsonl(out / set_name / f"{model}.jsonl")) == LIMIT
    with open(out / "summary.csv") as fh:
        csv_rows = {(r["model"], r["set"]): r for r in csv.DictReader(fh)}
    for key, row in rows.items():
        assert float(csv_rows[key]["judge_score"]) == pytest.approx(row["judge_score"])
    assert (out / "score_vs_length.png").stat().st_size > 1000
    table = evaluated["first"].stdout
    assert "judge" in table and "before" in table and "out_of_dist" in table


def test_generations_match_direct_greedy_decoding(evaluated, run):
    out = evaluated["out"]
    after = read_jsonl(out / "in_dist" / "after.jsonl")
    export = read_jsonl(out / "in_dist" / "export.jsonl")
    assert [r["response"] for r in after] == [r["response"] for r in export]  # same weights, two specs
    tok = AutoTokenizer.from_pretrained(run / "student")
    model = AutoModelForCausalLM.from_pretrained(run / "student").eval()
    for row in after[:3]:
        enc = tok.apply_chat_template(
            row["messages"], add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        gen = model.generate(**enc, max_new_tokens=32, do_sample=False, eos_token_id=258, pad_token_id=256)
        assert tok.decode(gen[0, enc["input_ids"].shape[1] :], skip_special_tokens=True) == row["response"]


def test_judge_free_metrics_recomputed(evaluated, run):
    out = evaluated["out"]
    rows = summary_rows(out)
    tok = AutoTokenizer.from_pretrained(run / "student")
    model = AutoModelForCausalLM.from_pretrained(run / "student").eval()
    for set_name, path in (("in_dist", ID_SPLIT), ("out_of_dist", OOD_SPLIT)):
        records = read_records(path)[0][:LIMIT]
        lines = read_jsonl(out / set_name / "export.jsonl")
        assert [r["id"] for r in records] == [r["id"] for r in lines]
        responses = [r["response"] for r in lines]
        row = rows[("export", set_name)]
        # toy accuracy, by the toy teacher's checker
        assert row["toy_accuracy"] == pytest.approx(np.mean([check(r["meta"], s) for r, s in zip(records, responses)]))
        # length ratio, in student tokens
        n_s = [len(tok(s, add_special_tokens=False)["input_ids"]) for s in responses]
        n_t = [len(tok(r["response"], add_special_tokens=False)["input_ids"]) for r in records]
        assert row["length_ratio"] == pytest.approx(sum(n_s) / sum(n_t))
        # ROUGE-L: LCS on the rouge tokens, F-measure
        assert row["rougeL"] == pytest.approx(np.mean([_lcs_f(s, r["response"]) for r, s in zip(records, responses)]))
        # perplexity: one unpadded forward per prompt, teacher response + end-of-turn token
        nll = count = 0.0
        for r in records:
            prompt = tok.apply_chat_template(r["messages"], add_generation_prompt=True, return_dict=False)
            resp = tok(r["response"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            ids = torch.tensor([list(prompt) + resp])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            targets = ids[0, 1:]
            nll -= logp[torch.arange(len(targets)), targets][-len(resp) :].sum().item()
            count += len(resp)
        assert row["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)


def _lcs_f(prediction: str, reference: str) -> float:
    a, b = tokens(prediction), tokens(reference)
    if not a or not b:
        return 0.0
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    lcs = table[-1][-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def test_judge_scores_both_orders_and_unparseable_count(evaluated, run):
    out = evaluated["out"]
    rows = summary_rows(out)
    tok = AutoTokenizer.from_pretrained(run / "student")
    for (model, set_name), row in rows.items():
        lines = read_jsonl(out / set_name / f"{model}.jsonl")
        skip = {i for i, r in enumerate(lines) if r["messages"][-1]["content"] == UNPARSEABLE_Q}
        assert len(skip) == (1 if set_name == "in_dist" else 0)
        assert row["judge_unparseable"] == len(skip)
        assert row["judge_n"] == LIMIT - len(skip) and row["judge_missing"] == 0
        ps = [points(r["response"]) for r in lines]
        pr = [points(reference_for(r["messages"][-1]["content"])) for r in lines]
        keep = [i for i in range(LIMIT) if i not in skip]
        # student first: the student gets the +1; student second: the reference does
        first = 100 * sum(ps[i] + 1 for i in range(LIMIT)) / sum(ps[i] + 1 + pr[i] for i in range(LIMIT))
        second = 100 * sum(ps[i] for i in keep) / sum(ps[i] + pr[i] + 1 for i in keep)
        s = [(ps[i] + 1 + ps[i]) / 2 for i in keep]
        r = [(pr[i] + pr[i] + 1) / 2 for i in keep]
        both = 100 * sum(s) / (sum(s) + sum(r))
        assert row["judge_score_student_first"] == pytest.approx(first)
        assert row["judge_score_student_second"] == pytest.approx(second)
        assert row["judge_score"] == pytest.approx(both)
        assert row["judge_score"] != pytest.approx(first) and row["judge_score"] != pytest.approx(second)
        # length control, recomputed: subset within [0.8, 1.25] and OLS at ratio 1
        n_s = [len(tok(lines[i]["response"], add_special_tokens=False)["input_ids"]) for i in keep]
        n_r = [
            len(tok(reference_for(lines[i]["messages"][-1]["content"]), add_special_tokens=False)["input_ids"])
            for i in keep
        ]
        assert row["judge_length_ratio"] == pytest.approx(sum(n_s) / sum(n_r))
        ratios = [max(a, 1) / max(b, 1) for a, b in zip(n_s, n_r)]
        sub = [j for j, q in enumerate(ratios) if 0.8 <= q <= 1.25]
        assert row["judge_lc_subset_n"] == len(sub)
        if sub:
            assert row["judge_lc_subset"] == pytest.approx(100 * sum(s[j] for j in sub) / sum(s[j] + r[j] for j in sub))
        per_prompt = [100 * a / (a + b) for a, b in zip(s, r)]
        x = np.log(ratios)
        if np.ptp(x) > 0 and x.min() <= 0 <= x.max():
            slope, intercept = np.polyfit(x, per_prompt, 1)
            assert row["judge_lc_regression"] == pytest.approx(intercept) and row["judge_lc_slope"] == pytest.approx(
                slope
            )
        else:
            assert row["judge_lc_regression"] is None  # NaN (no spread, or ratio 1 not covered) is written as null


def test_unparseable_verdict_was_retried_then_counted(evaluated, server):
    answers = set()
    out = evaluated["out"]
    for model in ("before", "after", "export"):
        lines = read_jsonl(out / "in_dist" / f"{model}.jsonl")
        answers |= {r["response"] for r in lines if r["messages"][-1]["content"] == UNPARSEABLE_Q}
    prefix = PAIR_TEMPLATE.format(question=UNPARSEABLE_Q, answer_1=reference_for(UNPARSEABLE_Q), answer_2="", prompt="")
    prefix = prefix.split("[The Start of Assistant 2")[0]
    sent = [r for r in server.requests if r.text.startswith(prefix)]
    assert len(sent) == (1 + PARSE_RETRIES) * len(answers)  # one verdict per distinct answer, retried, then given up


def test_rerun_sends_no_request_and_generates_nothing(evaluated):
    assert evaluated["requests_first"] > 0
    assert evaluated["requests_second"] == 0
    cache = json.loads((evaluated["out2"] / "summary.json").read_text())["cache"]
    assert cache["generation"]["new"] == 0 and cache["generation"]["cached"] == 3 * 2 * LIMIT
    assert cache["perplexity"]["new"] == 0 and cache["models_loaded"] == []
    assert cache["judge"]["requests"] == 0 and cache["judge"]["verdicts_sent"] == 0
    first = json.loads((evaluated["out"] / "summary.json").read_text())
    assert first["cache"]["generation"]["new"] > 0
    assert summary_rows(evaluated["out2"]) == summary_rows(evaluated["out"])  # same numbers from the cache


def test_key_never_written_or_printed(evaluated, server):
    assert all(r.authorization == f"Bearer {SENTINEL}" for r in server.requests)
    for proc in (evaluated["first"], evaluated["second"]):
        assert SENTINEL not in proc.stdout + proc.stderr
    for path in evaluated["log_dir"].rglob("*"):
        if path.is_file():
            assert SENTINEL.encode() not in path.read_bytes(), path


# ---------------------------------------------------------------------------------- other tests
def test_failed_judge_requests_resume(run, tmp_path):
    # every reference request for one prompt fails (500, no client retries): exit 3, then a re-run finishes
    failing = read_records(ID_SPLIT)[0][1]["messages"][-1]["content"]
    state = {"fail": True}

    def fault(text, attempt):
        return "500" if state["fail"] and text == failing else None

    with ChatServer(api_key=SENTINEL, reply_fn=judge_reply, fault_fn=fault, retry_after_ms=None) as srv:
        args = [
            f"models={{after: '{run}/student'}}",
            f"prompt_sets={{in_dist: '{ID_SPLIT}'}}",
            "limit=4",
            *judge_args(srv, **{"judge.max_retries": 0}),
        ]
        first = eval_cmd(tmp_path, *args)
        assert first.returncode == 3, first.stderr[-2000:]
        row = summary_rows(out_dir(first))[("after", "in_dist")]
        assert row["judge_missing"] == 1 and row["judge_n"] == 2  # 4 prompts: 1 unparseable, 1 without reference
        sent_before = len(srv.requests)
        state["fail"] = False
        second = eval_cmd(tmp_path, *args)
        assert second.returncode == 0, second.stderr[-2000:]
        resent = srv.requests[sent_before:]
        assert {r.text for r in resent if "[Question]" not in r.text} == {failing}  # only the missing reference
        assert all(failing in r.text for r in resent)
        row = summary_rows(out_dir(second))[("after", "in_dist")]
        assert row["judge_missing"] == 0 and row["judge_n"] == 3


def test_checkpoint_selection_uses_the_validation_split(run, tmp_path):
    proc = eval_cmd(tmp_path, f"select.run={run}", "select.max_length_ratio=100")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = out_dir(proc)
    selection = json.loads((out / "selection.json").read_text())
    assert [c["checkpoint"] for c in selection["checkpoints"]] == [
        "step_000002.ckpt",
        "step_000004.ckpt",
        "step_000006.ckpt",
    ]
    assert selection["metric"] == "toy_accuracy"
    cfg = run_config(run)
    held = validation_split(read_records(cfg.data.path)[0], cfg.data.val_size, cfg.data.seed)[1]
    for ckpt in selection["checkpoints"]:
        lines = read_jsonl(out / "validation" / f"{ckpt['checkpoint'][:-5]}.jsonl")
        assert [r["id"] for r in lines] == [r["id"] for r in held]  # the run's held-out split, not a test file
        assert ckpt["toy_accuracy"] == pytest.approx(np.mean([r["toy_correct"] for r in lines]))
    best = max(selection["checkpoints"], key=lambda c: (c["toy_accuracy"], -c["step"]))
    assert selection["best"] == best["path"] and "best checkpoint: " + best["path"] in proc.stdout

    # the length bound, on the same rows: just below the winner's ratio, the best among the rest that fit wins
    bound = max(best["length_ratio"] * 0.999, 1e-9)
    fitting = [c for c in selection["checkpoints"] if c["length_ratio"] <= bound]
    expected = max(fitting, key=lambda c: (c["toy_accuracy"], -c["step"])) if fitting else None
    rows = [
        {k: c[k] for k in ("checkpoint", "step", "path", "toy_accuracy", "length_ratio")}
        for c in selection["checkpoints"]
    ]
    chosen = pick_best(rows, "toy_accuracy", "length_ratio", bound)
    assert (chosen and chosen["path"]) == (expected and expected["path"])


def test_pick_best_hand_rows():
    rows = [
        {"step": 1, "rougeL": 0.5, "length_ratio": 1.4},
        {"step": 2, "rougeL": 0.4, "length_ratio": 1.1},
        {"step": 3, "rougeL": 0.4, "length_ratio": 0.9},
        {"step": 4, "rougeL": float("nan"), "length_ratio": 1.0},
    ]
    assert pick_best(rows, "rougeL", "length_ratio", None)["step"] == 1
    assert pick_best(rows, "rougeL", "length_ratio", 1.25)["step"] == 2  # tie: the earlier step
    assert [r["eligible"] for r in rows] == [False, True, True, False]
    assert pick_best(rows, "rougeL", "length_ratio", 0.5) is None
    ppl = [{"step": 1, "perplexity": 3.0, "length_ratio": 1.0}, {"step": 2, "perplexity": 2.0, "length_ratio": 1.0}]
    assert pick_best(ppl, "perplexity", "length_ratio", 1.25)["step"] == 2  # lower is better


def test_init_spec_rebuilds_the_runs_initial_student(run):
    cfg = run_config(run)
    L.seed_everything(cfg.seed, verbose=False)
    initial = build_module(cfg).generator.state_dict()  # what training started from
    spec = resolve_spec("before", f"init:{run}", run.parent.parent.parent)
    model, eos = load_model_for(spec, AutoTokenizer.from_pretrained(run / "student"), device="cpu")
    assert eos == [258]
    assert all(torch.equal(initial[k], v) for k, v in model.state_dict().items())


def test_missing_key_is_a_one_line_error_before_any_work(run, tmp_path):
    with ChatServer() as srv:
        proc = run_entry(
            "eval.py", f"paths.log_dir={tmp_path}", f"models={{a: '{run}'}}", *judge_args(srv), env={KEY_ENV: ""}
        )
        assert_one_line_error(proc, KEY_ENV)
        assert not srv.requests
    assert not (tmp_path / "eval" / "cache" / "students").exists()  # nothing generated


def test_bad_model_specs_name_the_key(run, tmp_path):
    with pytest.raises(GADError, match="models.a: .*no such file or folder"):
        resolve_spec("a", f"{tmp_path}/nope/x/y", tmp_path)
    with pytest.raises(GADError, match="models.b: .*init: needs a training run folder"):
        resolve_spec("b", f"init:{run}/student", tmp_path)
    with pytest.raises(GADError, match="no runs found"):
        resolve_spec("c", "latest", tmp_path)
    assert resolve_spec("d", "Qwen/Qwen2.5-3B-Instruct", tmp_path).kind == "hub"
    assert resolve_spec("e", f"{run}/student", tmp_path).kind == "folder"
    ckpt = resolve_spec("f", f"{run}/checkpoints/step_000002.ckpt", tmp_path)
    assert ckpt.kind == "checkpoint" and ckpt.fingerprint != resolve_spec("g", str(run), tmp_path).fingerprint


# ----------------------------------------------------------------------------------- unit tests
@pytest.mark.parametrize(
    "text, expected",
    [
        ("8 7\nbecause", (8.0, 7.0)),
        ("\n  **9, 6.5**  \nwhy", (9.0, 6.5)),
        ("Assistant 1: 8\nAssistant 2: 7", None),  # not a line of two scores
        ("8,7", (8.0, 7.0)),
        ("8 7 6", None),
        ("8\n7", None),
        ("11 3", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


def test_ngram_f1_hand_values():
    pred, ref = "a b c d".split(), "a b x d a".split()
    assert ngram_f1(pred, ref, 1) == pytest.approx(2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5))  # a, b, d match
    assert ngram_f1(pred, ref, 2) == pytest.approx(2 * (1 / 3) * (1 / 4) / (1 / 3 + 1 / 4))  # only "a b"
    assert ngram_f1(pred, ref, 3) == 0.0
    assert ngram_f1(pred, ref, 6) is None  # the reference has no 6-gram
    assert ngram_f1("a a a".split(), "a b".split(), 1) == pytest.approx(
        2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2)
    )  # clipped


def test_length_control_hand_values():
    assert lc.raw_score([6, 4], [4, 6]) == pytest.approx(50.0)
    assert lc.subset_score([9, 5, 1], [1, 5, 9], [2.0, 1.0, 0.9], 0.8, 1.25) == (30.0, 2)  # prompts 2 and 3: 6 / 20
    intercept, slope = lc.regression([40.0, 50.0, 60.0], [-1.0, 0.0, 1.0])
    assert (intercept, slope) == pytest.approx((50.0, 10.0))
    assert math.isnan(lc.regression([1.0, 2.0], [0.0, 1.0])[0])  # too few prompts
    assert math.isnan(lc.regression([40.0, 50.0, 60.0], [-3.0, -2.0, -1.0])[0])  # all shorter: no extrapolation


TWO_TEACHERS = ROOT / "data/toy_two_teachers/train.jsonl"  # one record per (id, teacher): toy-rules first


def test_a_several_teacher_set_is_one_row_per_prompt_with_its_first_teacher(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from gad.evaluation.select import validation_set
    from gad.evaluation.sets import load_set

    pset = load_set("two", str(TWO_TEACHERS), limit=3)  # 3 prompts, not 3 records (a prompt and a half)
    records = read_records(TWO_TEACHERS)[0]
    assert [r["id"] for r in pset.records] == list(dict.fromkeys(r["id"] for r in records))[:3]
    assert {r["teacher"] for r in pset.records} == {"toy-rules"}
    # the first record of an id in the file's order, whatever the teachers' names
    hand = tmp_path / "hand.jsonl"
    hand.write_text(
        "".join(
            json.dumps({"id": i, "messages": [{"role": "user", "content": q}], "response": f"{t}:{q}", "teacher": t})
            + "\n"
            for i, q, t in [("p0", "x", "b"), ("p1", "y", "a"), ("p0", "x", "a"), ("p1", "y", "b")]
        )
    )
    assert [r["response"] for r in load_set("hand", str(hand)).records] == ["b:x", "a:y"]
    # checkpoint selection's held-out split of a several-teacher run: the same, one row per prompt
    data = {"path": str(TWO_TEACHERS), "val_size": 5, "seed": 0}
    monkeypatch.setattr("gad.runs.run_config", lambda run_dir: OmegaConf.create({"data": data}))
    held = validation_set(OmegaConf.create({"select": {}, "limit": None}), tmp_path).records
    assert len(held) == 5 == len({r["id"] for r in held}) and {r["teacher"] for r in held} == {"toy-rules"}
