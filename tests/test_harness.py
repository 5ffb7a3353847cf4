"""lm-evaluation-harness in src/eval.py (gad.evaluation.harness), offline, at tiny shapes.

One short training run (module fixture) gives the toy student before (`init:<run>`) and after training. The
toy world's harness tasks (data/harness: gad_toy_in_dist, gad_toy_out_of_dist) must score exactly what eval's
own toy metric scores on the same prompts: the same generations, the same exact match. The multiple-choice
task (gad_mc_facts) runs the log-likelihood path on the real SmolLM2 student. Refusals are one line before
any model loads; a repeated evaluation comes from the cache; a failing task keeps the others' results.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from conftest import ROOT, assert_one_line_error, run_entry
from omegaconf import OmegaConf

pytest.importorskip("lm_eval", reason='lm-evaluation-harness is the harness extra: pip install -e ".[harness]"')

from gad.data.records import read_records  # noqa: E402
from gad.toy.check import check  # noqa: E402

LIMIT = 8
TASKS = {"in_dist": "gad_toy_in_dist", "out_of_dist": "gad_toy_out_of_dist"}
SPLITS = {"in_dist": ROOT / "data/toy/test_id.jsonl", "out_of_dist": ROOT / "data/toy/test_ood.jsonl"}


@pytest.fixture(scope="module")
def run(toy_run):
    return toy_run  # shared with the other files that only read it (conftest.toy_run)


def eval_cmd(log_dir, *args, env=None):
    return run_entry("eval.py", f"paths.log_dir={log_dir}", "progress=false", *args, env=env)


def out_dir(proc) -> Path:
    return Path(re.search(r"^outputs: (.+)$", proc.stdout, re.M).group(1))


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def evaluated(run, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("eval")
    args = [
        f"models={{before: 'init:{run}', after: '{run}'}}",
        f"prompt_sets={{in_dist: '{SPLITS['in_dist']}', out_of_dist: '{SPLITS['out_of_dist']}'}}",
        f"limit={LIMIT}",
        f"harness.tasks=[{','.join(TASKS.values())}]",
    ]
    first = eval_cmd(log_dir, *args)
    assert first.returncode == 0, first.stderr[-3000:]
    second = eval_cmd(log_dir, *args)
    assert second.returncode == 0, second.stderr[-3000:]
    return {"first": first, "second": second, "out": out_dir(first), "out2": out_dir(second)}


def harness_rows(out: Path) -> dict[tuple[str, str, str], dict]:
    rows = json.loads((out / "summary.json").read_text())["harness"]["rows"]
    return {(r["model"], r["task"], r["metric"]): r for r in rows}


def test_toy_tasks_score_what_evals_toy_metric_scores(evaluated):
    out = evaluated["out"]
    summary = {(r["model"], r["set"]): r for r in json.loads((out / "summary.json").read_text())["rows"]}
    harness = harness_rows(out)
    for model in ("before", "after"):
        for set_name, task in TASKS.items():
            ours = read_jsonl(out / set_name / f"{model}.jsonl")
            theirs = sorted(read_jsonl(out / "harness" / task / f"{model}.jsonl"), key=lambda r: r["doc_id"])
            assert len(theirs) == len(ours) == LIMIT  # `limit` applies to the harness too
            # the same prompts (the chat-rendered user turn), the same greedy generations, the same verdicts
            assert [r["doc"]["id"] for r in theirs] == [r["id"] for r in ours]
            assert [r["filtered_resps"][0] for r in theirs] == [r["response"] for r in ours]
            assert [bool(r["exact_match"]) for r in theirs] == [r["toy_correct"] for r in ours]
            row = harness[(model, task, "exact_match")]
            assert row["value"] == pytest.approx(summary[(model, set_name)]["toy_accuracy"])
            assert row["n"] == LIMIT and row["stderr"] is not None and row["requested"]
    # the rendered prompt is the model's chat template around the user turn (generation.system_prompt=none)
    first = read_jsonl(out / "harness" / TASKS["in_dist"] / "after.jsonl")[0]
    prompt = first["arguments"][0][0]  # (context, generation kwargs) of its one request
    assert prompt == f"<|im_start|>user\n{first['doc']['messages'][-1]['content']}<|im_end|>\n<|im_start|>assistant\n"


def test_report_table_csv_and_quiet_terminal(evaluated):
    proc, out = evaluated["first"], evaluated["out"]
    assert "lm-evaluation-harness" in proc.stdout and "exact_match" in proc.stdout
    lines = (out / "harness.csv").read_text().splitlines()
    assert lines[0].startswith("model,spec,task,alias,requested,metric,filter,value,stderr,n")
    assert len(lines) == 1 + 2 * 2  # 2 models x 2 tasks x 1 metric
    # lm-eval's own logging and tqdm bars are off (progress=false: nothing of ours either)
    assert proc.stderr.strip() == "", proc.stderr[-2000:]


def test_repeated_run_hits_the_cache(evaluated):
    cache = json.loads((evaluated["out2"] / "summary.json").read_text())["cache"]
    assert cache["harness"] == {"new": 0, "cached": 4, "models_loaded": []}
    assert cache["models_loaded"] == []  # no model loaded at all
    first = json.loads((evaluated["out"] / "summary.json").read_text())["cache"]["harness"]
    assert first["new"] == 4 and first["models_loaded"] == ["before", "after"]
    assert harness_rows(evaluated["out2"]) == harness_rows(evaluated["out"])
    for task in TASKS.values():  # the per-document outputs come from the cache too
        assert (evaluated["out2"] / "harness" / task / "after.jsonl").read_bytes() == (
            evaluated["out"] / "harness" / task / "after.jsonl"
        ).read_bytes()


def test_toy_exact_match_is_the_toy_checker():
    """The task's metric (exact_match, surrounding whitespace ignored) against gad.toy.check, answer by answer."""
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_path=str(ROOT / "data/harness"), include_defaults=False).load(["gad_toy_out_of_dist"])
    task = task["tasks"]["gad_toy_out_of_dist"]
    docs = list(task.test_docs())[:5]
    records = read_records(SPLITS["out_of_dist"])[0][:5]
    for doc, record in zip(docs, records):
        answer = record["meta"]["answer"]
        for response in (answer, f" {answer}\n", f"{answer}.", f"{answer} {answer}", "", answer.upper() + "x"):
            assert bool(task.process_results(doc, [response])["exact_match"]) == check(record["meta"], response)


def test_multiple_choice_task_on_smollm2(smollm2, tmp_path):
    proc = eval_cmd(tmp_path, f"models={{smol: '{smollm2}'}}", "prompt_sets={}", "harness.tasks=[gad_mc_facts]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = harness_rows(out_dir(proc))
    acc, acc_norm = rows[("smol", "gad_mc_facts", "acc")], rows[("smol", "gad_mc_facts", "acc_norm")]
    assert acc["n"] == 8 and math.isfinite(acc["value"]) and 0 <= acc["value"] <= 1 and math.isfinite(acc["stderr"])
    assert math.isfinite(acc_norm["value"])
    docs = read_jsonl(out_dir(proc) / "harness" / "gad_mc_facts" / "smol.jsonl")
    assert len(docs) == 8 and all(len(d["resps"]) == 4 for d in docs)  # one log-likelihood per choice
    assert all(math.isfinite(r[0][0]) for d in docs for r in d["resps"])


def test_checkpoint_selection_by_a_harness_metric(run, tmp_path):
    metric = "harness:gad_toy_in_dist:exact_match"
    proc = eval_cmd(tmp_path, f"select.run={run}", f"select.metric={metric}", "select.max_length_ratio=null", "limit=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = out_dir(proc)
    selection = json.loads((out / "selection.json").read_text())
    rows = harness_rows(out)
    assert selection["metric"] == metric and selection["higher_is_better"] is True
    assert [c["checkpoint"] for c in selection["checkpoints"]] == [f"step_00000{i}.ckpt" for i in (2, 4, 6)]
    for c in selection["checkpoints"]:
        assert c[metric] == rows[(c["checkpoint"][:-5], "gad_toy_in_dist", "exact_match")]["value"]
    best = max(selection["checkpoints"], key=lambda c: (c[metric], -c["step"]))
    assert selection["best"] == best["path"]


def test_uncached_hub_task_offline_is_one_line_before_any_model_loads(run, tmp_path):
    """A task on a hub dataset (ARC's, as lm-eval's arc_challenge reads it) in a local folder: the same check as
    for a built-in task, without indexing lm-eval's ~15,000 built-in names (~7 s; `benchmark=harness` offline
    names all five of its datasets the same way)."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "hub_arc.yaml").write_text(
        "task: hub_arc\ndataset_path: allenai/ai2_arc\ndataset_name: ARC-Challenge\noutput_type: multiple_choice\n"
        "test_split: test\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices.text}}'\ndoc_to_target: 0\n"
        "metric_list: [{metric: acc}]\n"
    )
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets")}  # nothing cached
    args = [f"models={{after: '{run}'}}", "harness.tasks=[hub_arc]", f"harness.include_path={tasks}"]
    proc = eval_cmd(tmp_path, *args, env=env)
    assert_one_line_error(proc, "'hub_arc' needs allenai/ai2_arc", "HF_HUB_OFFLINE=1", "with hub access")
    assert not (tmp_path / "eval" / "cache").exists()  # nothing generated, no model loaded


def test_unknown_task_lists_close_names():
    """The check src/eval.py makes (on lm-eval's whole index there: ~7 s; here on the local folder's)."""
    from lm_eval.tasks import TaskManager

    from gad.evaluation.harness import unknown_task

    known = list(TaskManager(include_path=str(ROOT / "data/harness"), include_defaults=False).task_index)
    line = unknown_task("gad_toy_in_dis", known, "data/harness")
    assert line.startswith("harness.tasks: no task, group or tag named 'gad_toy_in_dis'") and "\n" not in line
    assert line.endswith("close names: gad_toy_in_dist, gad_toy_out_of_dist")
    assert unknown_task("zzz", known, None).endswith("see `lm_eval ls tasks`")


def test_bad_harness_value_is_one_line(tmp_path):
    assert_one_line_error(eval_cmd(tmp_path, "harness.chat_template=sometimes"), "harness.chat_template=sometimes")
    assert_one_line_error(eval_cmd(tmp_path, "select.run=latest", "select.metric=harness:gsm8k"), "select.metric")


def test_a_failing_task_keeps_the_others_and_is_retried(run, tmp_path):
    """In process: a task whose dataset function raises fails alone; the next run retries only it."""
    from hydra.utils import instantiate

    from gad.evaluation.harness import harness_for
    from gad.evaluation.model_specs import load_model_for, resolve_spec
    from gad.runs import run_config

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "broken.py").write_text("def split(**_):\n    raise RuntimeError('broken on purpose')\n")
    (tasks / "ok.yaml").write_text(
        (ROOT / "data/harness/gad_toy_in_dist.yaml")
        .read_text()
        .replace("task: gad_toy_in_dist", "task: ok")
        .replace("gad_tasks.split", "ok.split")
        .replace("../toy/test_id.jsonl", str(SPLITS["in_dist"]))
    )
    (tasks / "ok.py").write_text((ROOT / "data/harness/gad_tasks.py").read_text())
    (tasks / "broken.yaml").write_text(
        (tasks / "ok.yaml").read_text().replace("task: ok", "task: broken").replace("ok.split", "broken.split")
    )
    cfg = OmegaConf.load(ROOT / "conf/eval.yaml")
    cfg.merge_with(
        {
            "cache_dir": str(tmp_path / "cache"),
            "limit": 2,
            "generation": {"max_new_tokens": 32, "batch_size": 4},
            "harness": {"tasks": ["broken", "ok"], "include_path": str(tasks)},
        }
    )
    spec = resolve_spec("after", str(run), tmp_path)
    tokenizer = instantiate(run_config(run).model.tokenizer)
    loads = []

    def load():
        loads.append(1)
        return load_model_for(spec, tokenizer, device="cpu")[0]

    for attempt in range(2):
        harness = harness_for(cfg, {"after": spec})
        harness.run_model("after", spec, tokenizer, load)
        assert [f["task"] for f in harness.failures] == ["broken"] and "broken on purpose" in harness.failures[0][
            "error"
        ]
        assert [(r["task"], r["metric"]) for r in harness.rows] == [("ok", "exact_match")]
        assert (harness.stats.computed, harness.stats.cached) == ((1, 0) if attempt == 0 else (0, 1))
    assert len(loads) == 2  # the second run loaded the model for the failed task only
