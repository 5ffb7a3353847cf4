"""A received model or tokenizer folder whose config names code of its own (`auto_map`) is refused in one
line naming the file: transformers is never left to ask "run the custom code? [y/N]" (answering y ran it),
and nothing in the folder runs. Every place that loads a model or tokenizer (gad/remote_code.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, assert_one_line_error, run_entry

from gad.errors import GADError

TOKENIZER = ROOT / "data" / "toy" / "tokenizer"


def hostile_folder(tmp_path: Path, where: str) -> tuple[Path, Path]:
    """The toy tokenizer plus a tiny model config, `auto_map` in `where` pointing at evil.py, which would
    write `marker` when imported. Returns (folder, marker)."""
    folder, marker = tmp_path / "received", tmp_path / "RAN"
    shutil.copytree(TOKENIZER, folder)
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = {"model_type": "qwen2", "vocab_size": 300, "hidden_size": 8, "num_hidden_layers": 1}
    config |= {"num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 16}
    if where == "config.json":  # a model type transformers does not know: only the folder's code could load it
        config["model_type"] = "evilmodel"
        config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    else:
        tok = json.loads((folder / "tokenizer_config.json").read_text())
        tok["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
        (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def load_via(site: str, folder: Path) -> None:
    if site == "load_student":
        from gad.models import load_student

        load_student(name_or_path=str(folder))
    elif site == "load_tokenizer":
        from gad.models import load_tokenizer

        load_tokenizer(str(folder))
    elif site == "kd_local_teacher":
        from gad.kd_teachers.local import LocalTeacher
        from gad.models import load_tokenizer

        LocalTeacher(str(folder)).setup(load_tokenizer(str(TOKENIZER)))
    elif site == "prepare_token_counter":
        from gad.teacher_data.prepare.filters import TokenCounter

        TokenCounter(str(folder))
    elif site == "collect_system_prompt_tokenizer":
        from omegaconf import OmegaConf

        from gad.teacher_data.collect.config import plan_from_config

        cfg = OmegaConf.load(ROOT / "conf" / "collect.yaml")
        cfg.teacher = OmegaConf.load(ROOT / "conf" / "teacher" / "openai.yaml")
        cfg.prompts, cfg.output = str(ROOT / "data" / "toy" / "test_id.jsonl"), "/nonexistent/out.jsonl"
        cfg.system_prompt, cfg.system_prompt_tokenizer = "template_default", str(folder)
        plan_from_config(OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("defaults", "hydra", "paths")]))


@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json"])
@pytest.mark.parametrize(
    "site",
    ["load_student", "load_tokenizer", "kd_local_teacher", "prepare_token_counter", "collect_system_prompt_tokenizer"],
)
def test_every_loader_refuses_a_folder_with_auto_map_naming_the_file(tmp_path, site, where):
    folder, marker = hostile_folder(tmp_path, where)
    with pytest.raises(GADError, match="auto_map") as err:
        load_via(site, folder)
    assert str(folder / where) in str(err.value) and "trust_remote_code" in str(err.value)
    assert not marker.exists()


def test_an_entry_never_asks_and_never_runs_the_folders_code(tmp_path):
    """src/prepare.py filters.tokenizer=<received folder>, with `y` waiting on stdin: transformers asked
    "run the custom code? [y/N]" and ran evil.py. Now one line, nothing asked, nothing run, nothing written.
    (src/eval.py models={x: <folder>} loads through the same gad.models loaders, tested above; prepare is the
    entry that reaches them in half a second.)"""
    folder, marker = hostile_folder(tmp_path, "config.json")
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi there"}\n{"prompt": "hello you"}\n')
    proc = run_entry(
        "prepare.py",
        "source.kind=local",
        f"source.path={tmp_path / 'p.jsonl'}",
        f"out_dir={tmp_path / 'out'}",
        f"filters.tokenizer={folder}",
        "filters.max_prompt_tokens=100",
        f"hydra.run.dir={tmp_path / 'h'}",
        env={"HF_MODULES_CACHE": str(tmp_path / "modules")},
        input="y\n",
        timeout=120,
    )
    assert "[y/N]" not in proc.stdout + proc.stderr
    assert_one_line_error(proc, "filters.tokenizer", str(folder / "config.json"), "auto_map")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_hub_id_whose_cached_config_has_auto_map_is_refused(tmp_path, monkeypatch):
    """A hub id already in the local cache is checked the same way, before transformers is called."""
    import huggingface_hub.constants

    from gad.models import load_tokenizer

    snapshot = tmp_path / "hub" / "models--evil-org--evil-model" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "evilmodel", "auto_map": {"AutoConfig": "e.C"}}))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(GADError, match="auto_map") as err:
        load_tokenizer("evil-org/evil-model")
    assert str(snapshot / "config.json") in str(err.value)
