"""An API key passed on the command line is refused before Hydra writes anything: no .hydra/ files,
no run folder, and the key never appears in stdout, stderr or any file; the line names the
environment-variable knob to use instead."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import ROOT, assert_one_line_error, run_entry

from gad.errors import GADError, refuse_secrets

SENTINEL = "sk-proj-SENTINEL0secret0abcdef0123456789"


@pytest.mark.parametrize(
    "script, overrides, knob",
    [
        ("collect.py", ["teacher.api_key_env=" + SENTINEL], "teacher.api_key_env"),
        ("collect.py", ["+teacher.api_key=" + SENTINEL], "teacher.api_key_env"),
        ("collect.py", ["++teacher.api_key=" + SENTINEL], "teacher.api_key_env"),
        ("eval.py", ["judge=gpt4o", "judge.api_key_env=" + SENTINEL], "judge.api_key_env"),
        ("eval.py", ["judge=gpt4o", "+judge.api_key=" + SENTINEL], "judge.api_key_env"),
        ("train.py", ["method=kd", "+method.teacher.api_key=" + SENTINEL], "method.teacher.api_key_env"),
        ("train.py", ["data.path=" + SENTINEL], "api_key_env"),  # key-shaped anywhere
    ],
)
def test_key_on_the_command_line_is_refused_before_hydra_writes(tmp_path, script, overrides, knob):
    args = [f"paths.log_dir={tmp_path}/logs", f"prompts={ROOT}/data/toy/test_id.jsonl", f"output={tmp_path}/out.jsonl"]
    if script != "collect.py":
        args = args[:1]
    proc = run_entry(script, *args, *overrides, cwd=tmp_path)
    line = assert_one_line_error(proc, knob, "environment variable")
    assert SENTINEL not in proc.stdout + proc.stderr and SENTINEL not in line
    assert not list(tmp_path.rglob(".hydra")) and not (tmp_path / "logs").exists()
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and SENTINEL.encode() in p.read_bytes()]


def test_names_and_ordinary_values_pass():
    refuse_secrets(
        [
            "teacher.api_key_env=OPENAI_API_KEY",
            "judge.api_key_env=A,B",
            "data.path=/d/key-value-store.jsonl",
            "model.student.name_or_path=Qwen/Qwen2.5-7B-Instruct",
            "-m",
            "--cfg",
            "job",
            "seed=1",
        ]
    )
    with pytest.raises(GADError, match="judge.api_key_env must be the NAME") as err:
        refuse_secrets(["judge.api_key_env=key-1234"])
    assert "key-1234" not in str(err.value)


# A secret that is not shaped like a key: only the knob's name, the URL's shape or the variable's name tell.
PLAIN = "plainSENTINEL0secret42"


@pytest.mark.parametrize(
    "script, override, knob",
    [
        ("collect.py", "+teacher.API_KEY=" + PLAIN, "teacher.api_key_env"),
        ("collect.py", "+teacher.OpenAI_ApiKey=" + PLAIN, "teacher.api_key_env"),
        ("collect.py", "+hydra.job.env_set.OPENAI_API_KEY=" + PLAIN, "environment variable OPENAI_API_KEY"),
        ("collect.py", f"teacher.base_url=http://user:{PLAIN}@127.0.0.1:9/v1", "teacher.api_key_env"),
        ("train.py", f"method.teacher.base_url=https://{PLAIN}@127.0.0.1:9/v1", "method.teacher.api_key_env"),
    ],
)
def test_a_secret_by_name_env_set_or_url_is_refused_before_hydra_writes(tmp_path, script, override, knob):
    args = [f"paths.log_dir={tmp_path}/logs"]
    if script == "collect.py":
        args += [f"prompts={ROOT}/data/toy/test_id.jsonl", f"output={tmp_path}/out.jsonl"]
    proc = run_entry(script, *args, override, cwd=tmp_path)
    line = assert_one_line_error(proc, knob, "environment variable")
    assert PLAIN not in proc.stdout + proc.stderr and PLAIN not in line
    assert not list(tmp_path.rglob("*"))  # no run folder, no .hydra/, no output


@pytest.mark.parametrize(
    "preset, override, fragment",
    [
        ("teacher/mine.yaml", "teacher=mine", "teacher.api_key: an API key is never given in a config"),
        ("teacher/mine.yaml", "teacher=mine", "teacher.base_url: a URL with credentials"),
        ("env/mine.yaml", "+env=mine", "hydra.job.env_set.MY_KEY: a secret is never set in a config"),
    ],
)
def test_a_secret_in_a_config_dir_preset_is_refused_before_hydra_writes(tmp_path, preset, override, fragment):
    """What only the composed config shows (gad/secrets_check.py, a Hydra callback that runs first)."""
    body = {
        "teacher.api_key": f"defaults:\n  - openai\n  - _self_\napi_key: {PLAIN}\n",
        "teacher.base_url": f"defaults:\n  - openai\n  - _self_\nbase_url: http://me:{PLAIN}@127.0.0.1:9/v1\n",
        "hydra.job.env_set.MY_KEY": f"# @package _global_\nhydra:\n  job:\n    env_set:\n      MY_KEY: {PLAIN}\n",
    }[fragment.split(":")[0]]
    (tmp_path / "presets" / preset).parent.mkdir(parents=True)
    (tmp_path / "presets" / preset).write_text(body)
    run_dir = tmp_path / "work"
    run_dir.mkdir()
    proc = run_entry(
        "collect.py",
        "--config-dir",
        str(tmp_path / "presets"),
        f"paths.log_dir={run_dir}/logs",
        f"prompts={ROOT}/data/toy/test_id.jsonl",
        f"output={run_dir}/out.jsonl",
        override,
        cwd=run_dir,
    )
    line = assert_one_line_error(proc, fragment, "environment variable")
    assert PLAIN not in proc.stdout + proc.stderr and PLAIN not in line
    assert not list(run_dir.rglob("*"))  # no run folder, no .hydra/, no output


def test_names_booleans_references_and_harmless_env_vars_pass():
    refuse_secrets(
        [
            "teacher.require_api_key=false",
            "+hydra.job.env_set.CUDA_VISIBLE_DEVICES=0",
            "+hydra.job.env_set.TOKENIZERS_PARALLELISM=1",
            "+teacher.api_key=${oc.env:MY_KEY}",
            "teacher.base_url=http://127.0.0.1:8000/v1",
            "model.pad_token=<pad>",
        ]
    )


class _Rejecting(BaseHTTPRequestHandler):
    """Answers everything with OpenAI's 401, echoing the key it was sent."""

    def log_message(self, *args):
        pass

    def _reject(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        key = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        body = json.dumps(
            {
                "error": {
                    "message": f"Incorrect API key provided: {key}. You can find your API key at https://x/keys.",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            }
        ).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _reject


# the model list (model unset), or the first completions request; a key-shaped key, and one only the teacher knows
@pytest.mark.parametrize("key, model", [(SENTINEL, None), (PLAIN, "served")])
def test_the_kd_api_teacher_never_shows_a_key_the_server_echoes(monkeypatch, key, model):
    from transformers import AutoTokenizer

    from gad.kd_teachers.api import APITeacher

    monkeypatch.setenv("GAD_TEST_TEACHER_KEY", key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Rejecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        teacher = APITeacher(
            f"http://127.0.0.1:{server.server_port}/v1", model=model, top_k=5, api_key_env="GAD_TEST_TEACHER_KEY"
        )
        with pytest.raises(GADError) as err:
            teacher.setup(AutoTokenizer.from_pretrained(ROOT / "data" / "toy" / "tokenizer"))
    finally:
        server.shutdown()
        server.server_close()
    message = str(err.value)
    assert "HTTP 401" in message and "Incorrect API key provided: ***" in message, message
    assert key not in message and "SENTINEL" not in message, message
    assert "$GAD_TEST_TEACHER_KEY" in message


@pytest.mark.parametrize("where", ["collect", "kd"])
def test_a_url_with_credentials_is_refused_by_the_typed_config_too(where):
    """For Python callers (no Hydra callback): one line naming the key, never the password (collect's
    aiohttp client used to end in a traceback on such a URL)."""
    from omegaconf import OmegaConf

    from gad.config.kd_teacher import KDTeacherConfig
    from gad.config.typed import typed
    from gad.teacher_data.collect.config import TeacherConfig

    url = f"http://me:{PLAIN}@127.0.0.1:9/v1"
    with pytest.raises(GADError, match="base_url: must not carry credentials") as err:
        if where == "kd":
            typed(KDTeacherConfig, {"kind": "api", "base_url": url, "top_k": 5}, "method.teacher")
        else:
            teacher = OmegaConf.load(ROOT / "conf" / "teacher" / "openai.yaml")
            typed(TeacherConfig, OmegaConf.merge(teacher, {"base_url": url}), "teacher")
    assert PLAIN not in str(err.value)
