"""`method=kd` through the real entry point, against a teacher served over HTTP on 127.0.0.1
(the completions protocol with prompt log-probs, tests/completions_server.py) and against the
same model loaded locally: the same first-step loss. A foreign tokenizer is refused in one line."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from completions_server import CompletionsServer
from conftest import fast_overrides
from omegaconf import OmegaConf

from gad.errors import GADError
from gad.kd_teachers import build_teacher
from gad.models import load_student, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TOP_K = 5
STEPS = 3
KD = [
    "method=kd",
    f"method.steps={STEPS}",
    "method.alpha=0.5",
    "method.alpha_warmup_steps=0",
    "method.on_policy=true",
    "callbacks.rollout_samples=null",
    *fast_overrides("method."),  # conf/debug/fast.yaml but its GAD keys
]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2 teacher (the student's architecture, another seed) with the toy tokenizer."""
    path = tmp_path_factory.mktemp("teacher")
    config = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "tiny.yaml").student.config)
    torch.manual_seed(4321)
    load_student(config={**config, "initializer_range": 0.2}).save_pretrained(path)  # peaked: top-5 holds ~30%
    load_tokenizer(str(ROOT / "data" / "toy" / "tokenizer")).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def foreign_dir(tmp_path_factory) -> Path:
    """A teacher with its own tokenizer: the toy one plus a merged token "the" (and a 260-row model)."""
    path = tmp_path_factory.mktemp("foreign")
    tok = load_tokenizer(str(ROOT / "data" / "toy" / "tokenizer"))
    tok.add_tokens(["the"])  # the probe text tokenises differently
    tok.save_pretrained(path)
    config = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "tiny.yaml").student.config)
    load_student(config={**config, "vocab_size": len(tok)}).save_pretrained(path)
    return path


def start(log_dir: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    args = [
        sys.executable,
        str(ROOT / "src" / "train.py"),
        f"paths.log_dir={log_dir}",
        f"paths.cache_dir={log_dir}/cache",
        *KD,
        *overrides,
    ]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: int = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def step_rows(log_dir: Path) -> list[dict]:
    run = sorted((log_dir / "train" / "runs").iterdir())[-1]
    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get("train/step")]
    return sorted(rows, key=lambda r: float(r["train/step"]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, teacher_dir, foreign_dir):
    """Three entry-point runs at once (2 cores): HTTP teacher, local teacher, foreign-tokenizer server."""
    with CompletionsServer(str(teacher_dir)) as server, CompletionsServer(str(foreign_dir)) as foreign:
        logs = {name: tmp_path_factory.mktemp(name) for name in ("http", "local", "foreign")}
        api = ["method.teacher.kind=api", f"method.teacher.top_k={TOP_K}", "method.teacher.request_batch_size=2"]
        procs = {
            "http": start(logs["http"], *api, f"method.teacher.base_url={server.base_url}"),
            "local": start(
                logs["local"],
                "method.teacher.kind=local",
                f"method.teacher.path={teacher_dir}",
                f"method.teacher.top_k={TOP_K}",
            ),
            "foreign": start(logs["foreign"], *api, f"method.teacher.base_url={foreign.base_url}"),
        }
        results = {name: finish(proc) for name, proc in procs.items()}
        requests = server.requests
    return logs, results, requests


def test_http_teacher_trains_and_matches_the_local_teacher_on_the_first_step(runs):
    logs, results, requests = runs
    for name in ("http", "local"):
        code, out, err = results[name]
        assert code == 0, f"{name} run failed:\n{out[-2000:]}\n{err[-3000:]}"
    http, local = step_rows(logs["http"]), step_rows(logs["local"])
    assert [float(r["train/step"]) for r in http] == list(range(1, STEPS + 1))
    # the server answered every micro-batch of every step: the probe, then >= 1 request per step
    assert requests >= 1 + STEPS
    for rows in (http, local):
        for r in rows:
            assert math.isfinite(float(r["train/loss"])) and float(r["train/kl"]) > 0 and float(r["train/sft_loss"]) > 0
            assert 0 < float(r["train/teacher_topk_mass"]) <= 1
    first_http, first_local = float(http[0]["train/loss"]), float(local[0]["train/loss"])
    assert first_http == pytest.approx(first_local, rel=1e-5, abs=1e-6), (first_http, first_local)
    assert float(http[0]["train/kl"]) == pytest.approx(float(local[0]["train/kl"]), rel=1e-5, abs=1e-6)
    # the loss is the documented blend of the logged parts
    r = http[0]
    assert float(r["train/loss"]) == pytest.approx(
        0.5 * float(r["train/sft_loss"]) + 0.5 * 4.0 * float(r["train/kl"]), rel=1e-5
    )
    assert float(http[-1]["train/loss"]) != first_http  # it trained


def test_a_server_with_another_tokenizer_is_refused_in_one_line(runs):
    _, results, _ = runs
    code, out, err = results["foreign"]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, err[-2000:])
    # data and Lightning reports come first; the failure itself is the one last line
    assert lines[-1].startswith("error: ") and sum(ln.startswith("error") for ln in lines) == 1, err[-2000:]
    assert "does not share the student's tokenizer" in lines[-1] and "Traceback" not in out + err
    assert "first difference at token" in lines[-1]


def test_api_teacher_scores_equal_the_local_teacher(teacher_dir):
    """In process: the parsed top-k + scored token from HTTP equal the local model's, position by position."""
    tok = load_tokenizer(str(ROOT / "data" / "toy" / "tokenizer"))
    local = build_teacher({"kind": "local", "path": str(teacher_dir), "top_k": TOP_K})
    local.setup(tok)
    enc = tok(
        ["<|im_start|>user\nAdd: 1 2<|im_end|>\n<|im_start|>assistant\n3", "Max: 3 7 1\n7"], add_special_tokens=False
    )
    width = 3
    rows = [ids for ids in enc["input_ids"]]
    length = max(len(r) for r in rows)
    ids = torch.tensor([[tok.pad_token_id] * (length - len(r)) + r for r in rows])
    mask = (torch.arange(length) >= torch.tensor([[length - len(r)] for r in rows])).long()
    with CompletionsServer(str(teacher_dir)) as server:
        api = build_teacher({"kind": "api", "base_url": server.base_url, "top_k": TOP_K, "request_batch_size": 1})
        api.setup(tok)
        got, want = api.score(ids, mask, width), local.score(ids, mask, width)
        # Without token ids, token strings are mapped back through the tokenizer where that is unambiguous.
        strings = build_teacher({"kind": "api", "base_url": server.base_url, "top_k": TOP_K, "token_ids": False})
        strings.setup(tok)  # the probe compares decoded strings
        assert strings.token_id("A") == tok.convert_tokens_to_ids("A")
        with pytest.raises(GADError, match="several token ids decode to it"):
            strings.token_id("\ufffd")  # every byte >= 0x80 alone decodes to U+FFFD
        assert strings.model == server.model_name  # taken from /v1/models
    for b in range(2):
        for j in range(width):
            g = {int(i): v for i, v, ok in zip(got.ids[b, j], got.logprobs[b, j], got.valid[b, j]) if ok}
            w = {int(i): v for i, v, ok in zip(want.ids[b, j], want.logprobs[b, j], want.valid[b, j]) if ok}
            assert g.keys() == w.keys() and len(g) in (TOP_K, TOP_K + 1)
            assert all(abs(g[i] - w[i]) < 1e-5 for i in g)


def test_toy_teacher_is_fitted_once_and_its_recipe_checked(tmp_path):
    tok = load_tokenizer(str(ROOT / "data" / "toy" / "tokenizer"))
    lines = (ROOT / "data" / "toy" / "train.jsonl").read_text().splitlines()[:40]
    (tmp_path / "dump.jsonl").write_text("\n".join(lines) + "\n")
    config = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "tiny.yaml").student.config)
    recipe = {
        "_target_": "gad.toy.kd_teacher.ensure_teacher_model",
        "data": str(tmp_path / "dump.jsonl"),
        "config": config,
        "steps": 2,
        "batch_size": 4,
        "lr": 1e-3,
        "max_prompt_tokens": 64,
        "max_response_tokens": 12,
        "seed": 0,
    }
    spec = {"kind": "local", "path": str(tmp_path / "teacher"), "build": recipe}
    build_teacher(spec).setup(tok)  # fits and saves
    saved = (tmp_path / "teacher" / "model.safetensors").stat().st_mtime_ns
    assert (tmp_path / "teacher" / "build.json").is_file()
    teacher = build_teacher(spec)
    teacher.setup(tok)  # reuses
    assert (tmp_path / "teacher" / "model.safetensors").stat().st_mtime_ns == saved and teacher.model is not None
    with pytest.raises(GADError, match="different method.teacher.build recipe"):
        build_teacher({**spec, "build": {**recipe, "steps": 3}}).setup(tok)
