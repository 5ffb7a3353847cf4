"""The real configs compose and validate; bad values stop early with one line naming the key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, assert_one_line_error, run_entry
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from gad.config.validate import validate
from gad.errors import GADError

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={ROOT}", "paths.output_dir=/tmp/gad-test-out", *overrides])
    return cfg


def test_there_are_real_model_experiments():
    assert {"gad_qwen7b", "gad_qwen3b", "gad_qwen14b", "gad_llama8b", "seqkd_qwen7b"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_validates(name):
    validate(composed(f"experiment={name}"))


def test_paper_hyperparameters_in_the_main_experiment():
    cfg = composed("experiment=gad_qwen7b")
    m = cfg.method
    assert (m.temperature, m.num_samples, m.kl_coef, m.clip_ratio, m.alpha, m.d_loss) == (0.8, 8, 0.001, 0.2, 0.0, "bt")
    assert (m.warmup_steps, m.d_only_steps, m.adversarial_steps) == (800, 10, 1600)
    assert m.generator_optimizer.lr == m.discriminator_optimizer.lr == 1e-6
    assert m.generator_grad_clip == m.discriminator_grad_clip == 0.2
    assert (cfg.data.max_prompt_tokens, cfg.data.max_response_tokens, m.max_new_tokens) == (2048, 1536, 1536)
    assert cfg.model.student.name_or_path == "Qwen/Qwen2.5-7B-Instruct" and cfg.model.student.gradient_checkpointing
    assert cfg.trainer.precision == "bf16-mixed"
    assert composed("experiment=seqkd_qwen7b").method.generator_optimizer.lr == 5e-6


def test_default_run_is_the_toy_world_at_toy_scale():
    cfg = composed()
    toy = OmegaConf.load(ROOT / "conf" / "method" / "gad.yaml").toy
    assert cfg.data.path.endswith("data/toy/train.jsonl") and cfg.model.student.name_or_path is None
    assert (
        cfg.method.warmup_steps == toy.warmup_steps and cfg.method.micro_batch_size == 80 and cfg.scale_preset == "toy"
    )
    assert cfg.trainer.accelerator == "cpu"


@pytest.mark.parametrize(
    "override, key",
    [
        ("method.temperature=0", "method.temperature"),
        ("method.temperature=-1", "method.temperature"),
        ("method.alpha=1.5", "method.alpha"),
        ("method.alpha=-0.1", "method.alpha"),
        ("method.num_samples=1", "method.num_samples"),
        ("method.d_loss=hinge", "method.d_loss"),
        ("method.rollout.engine=sglang", "method.rollout.engine"),
        ("method.rollout.tis_cap=0.5", "method.rollout.tis_cap"),
        ("method.d_only_steps=1000", "method.d_only_steps"),
        ("data.batch_size=0", "data.batch_size"),
        ("+method.temprature=1", "method.temprature"),
        ("+data.pth=x", "data.pth"),
        ("trainer.strategy=deepspeed_stage_2", "trainer.strategy"),
        ("data=dump", "data.path: required"),
    ],
)
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(GADError, match=key.replace(".", r"\.")):
        validate(composed(override))


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("method.temperature=0", "method.temperature=0 is invalid"),
        ("method.temprature=1", "method.temprature"),
        ("method=kd method.temperature=2", "renamed method.softening_temperature"),  # KD's T, before a rename
        ("method.generator_scheduler.warmup_steps=5", "renamed method.generator_scheduler.warmup_updates"),
    ],
)
def test_bad_config_from_the_command_line_is_one_line(tmp_path, override, fragment):
    assert_one_line_error(run_entry("train.py", *override.split(), f"paths.log_dir={tmp_path}"), fragment)


@pytest.mark.parametrize(
    "script, override, error",
    [
        ("train.py", "method.num_samples=2.5", "error: method.num_samples=2.5 is invalid"),
        ("eval.py", "generation.max_new_tokens=0", "error: generation.max_new_tokens=0 is invalid"),
        ("train.py", "data.batch_size=1000000000000", "error: data.batch_size=1000000000000 is invalid"),
        ("eval.py", "generation.greedy=false generation.temperature=1e9", "error: generation.temperature=1000000000.0"),
        ("eval.py", "harness.limit=0", "error: harness.limit=0 is invalid"),
    ],
)
def test_a_bad_value_stops_the_entry_before_torch_is_imported(tmp_path, script, override, error):
    """src/train.py and src/eval.py validate their config before importing torch (gad.cli.start's check)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "src" / script), *override.split()],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PROJECT_ROOT": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert proc.returncode == 2 and error in proc.stderr
    assert "gad.config.typed" in imported and not {"torch", "lightning", "transformers"} & imported


def test_real_experiment_offline_fails_with_one_line(tmp_path):
    proc = run_entry("train.py", "experiment=gad_qwen7b", f"paths.log_dir={tmp_path}")
    assert_one_line_error(proc, "Qwen/Qwen2.5-7B-Instruct", "offline")


def test_cfg_job_prints_the_composed_experiment():
    proc = run_entry("train.py", "experiment=gad_llama8b", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr
    assert "meta-llama/Llama-3.1-8B-Instruct" in proc.stdout and "<|finetune_right_pad_id|>" in proc.stdout


@pytest.mark.parametrize("trainer", sorted(p.stem for p in (ROOT / "conf" / "trainer").glob("*.yaml")))
def test_every_trainer_composes_with_the_main_experiment(trainer):
    cfg = composed("experiment=gad_qwen7b", f"trainer={trainer}")
    validate(cfg)
    strategy = cfg.trainer.strategy
    expected = {
        "ddp": "TwoNetworkDDPStrategy",
        "ddp_cpu": "TwoNetworkDDPStrategy",
        "fsdp": "TwoNetworkFSDPStrategy",
        "fsdp_cpu": "TwoNetworkFSDPStrategy",
    }.get(trainer)
    assert (strategy == "auto") if expected is None else strategy._target_ == f"gad.distributed.{expected}"


@pytest.mark.parametrize(
    "node, schema, key, fragment",
    [
        (
            {"run": "latest", "prompts": None, "metric": "bleu", "max_length_ratio": 1.25, "include_last": False},
            "SelectConfig",
            "select",
            "select.metric=bleu is invalid",
        ),
        (
            {"run": "latest", "prompts": None, "metric": "auto", "max_length_ratio": 0, "include_last": False},
            "SelectConfig",
            "select",
            "select.max_length_ratio=0 is invalid",
        ),
        ({"limit": 0}, "Limit", "", "limit=0 is invalid"),
        ({"path": "x.jsonl", "limit": 2.5}, "PromptSetSpec", "prompt_sets.a", "prompt_sets.a.limit=2.5 is invalid"),
        ({"path": "x.jsonl", "colums": {}}, "PromptSetSpec", "prompt_sets.a", "prompt_sets.a.colums: unknown key"),
    ],
)
def test_eval_knobs_name_their_key(node, schema, key, fragment):
    from gad.config.typed import typed
    from gad.evaluation import config, sets

    cls = getattr(config, schema, None) or getattr(sets, schema)
    with pytest.raises(GADError, match=re.escape(fragment)):
        typed(cls, node, key)


def test_a_run_folder_written_before_a_rename_loads_with_the_new_keys(tmp_path):
    """KD's `method.temperature` (now `softening_temperature`) and the schedulers' `warmup_steps` /
    `total_steps` (now `*_updates`) in an older run's config.yaml are read under their new names;
    GAD's `method.temperature` (a sampling temperature) stays."""
    from gad.runs import run_config

    def old_run(method: str, renamed: dict[str, dict[str, str]]) -> tuple[Path, dict]:
        current = OmegaConf.to_container(composed(f"method={method}"), resolve=True)
        cfg = OmegaConf.to_container(composed(f"method={method}"), resolve=True)
        for path, names in renamed.items():
            node = cfg
            for part in path.split("."):
                node = node[part]
            for new, old in names.items():
                node[old] = node.pop(new)
        run = tmp_path / method
        run.mkdir()
        OmegaConf.save(cfg, run / "config.yaml")
        return run, current

    schedules = {"warmup_updates": "warmup_steps", "total_updates": "total_steps"}
    for method, renamed in (
        ("kd", {"method": {"softening_temperature": "temperature"}, "method.generator_scheduler": schedules}),
        ("gad", {"method.generator_scheduler": schedules, "method.discriminator_scheduler": schedules}),
    ):
        run, current = old_run(method, renamed)
        assert OmegaConf.to_container(run_config(run)) == current, method


# Upper bounds (gad/config/bounds.py): a typo is one line at once, not a MemoryError after minutes, a hang
# (1e9 DataLoader workers) or a library's traceback. Sizes are 1e12: more than any machine holds.
@pytest.mark.parametrize(
    "override, fragment",
    [
        (
            "method.temperature=1e9",
            "method.temperature=1000000000.0 is invalid: must be a finite number > 0 and <= 100",
        ),
        ("method=kd method.rollout_temperature=101", "method.rollout_temperature=101 is invalid"),
        ("method=kd method.softening_temperature=1e9", "method.softening_temperature=1000000000.0 is invalid"),
        ("data.batch_size=1000000000000", "data.batch_size=1000000000000 is invalid: batch_size 1000000000000 x ("),
        ("data.val_batch_size=1000000000000", "data.val_batch_size=1000000000000 is invalid"),
        ("data.max_prompt_tokens=1000000000000", "data.max_prompt_tokens=1000000000000 is invalid"),
        ("method.num_samples=1000000000000", "method.num_samples=1000000000000 is invalid: num_samples 1000000000000"),
        ("method=kd method.samples_per_prompt=1000000000000", "method.samples_per_prompt=1000000000000 is invalid"),
        ("method.max_new_tokens=1000000000000", "method.max_new_tokens=1000000000000 is invalid"),
        # fits one prompt's samples, but not a step's: data.batch_size x num_samples (across concerns)
        ("data.batch_size=100000 method.num_samples=10000000", "data.batch_size 100000 x method.num_samples 10000000"),
        ("data.num_workers=1000000000", "data.num_workers=1000000000 is invalid: must be <= "),
    ],
)
def test_absurd_sizes_and_temperatures_are_refused_by_their_bound(override, fragment):
    with pytest.raises(GADError) as err:
        validate(composed(*override.split()))
    assert fragment in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_the_bounds_leave_real_values_alone():
    from gad.config import bounds
    from gad.config.validate import check_concerns

    cfg = composed("method.temperature=100", f"data.num_workers={bounds.available_cpus()}")
    check_concerns(cfg)  # the typed checks (validate() also imports the _target_s: torch, seconds)
    bounds.check_step_tokens(cfg)
    assert bounds.fits({"batch_size": 512}, {"max_prompt_tokens": 2048, "max_response_tokens": 1536}) is None


# ---------------------------------------------------------------- one definition per knob


def _leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict) and key not in ("toy", "rewards", "build", "extra_body"):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("name", ["gad", "kd", "seqkd", "soda", "ropd"])
def test_a_method_yaml_says_only_what_differs_from_its_dataclass(name):
    """conf/method/<name>.yaml and its dataclass agree: every key it sets is a knob of the dataclass (also in its
    `toy:` sizes), none restates a default, and the composed node holds exactly the dataclass's knobs, each at
    its default unless the YAML or the toy sizes set it."""
    import dataclasses

    from gad.config.registry import config_class, method_files
    from gad.config.typed import defaults

    path = method_files()[name]
    own = OmegaConf.to_container(OmegaConf.load(path))
    schema = config_class(own["_target_"])
    knobs = dict(_leaves(defaults(schema)))
    set_here = {k: v for k, v in _leaves({k: v for k, v in own.items() if k not in ("defaults", "_target_")})}
    toy = dict(_leaves(own.get("toy") or {}))
    for key in {**set_here, **toy}:
        if key == "toy" or key.startswith("teacher.build"):
            continue
        assert key in knobs, f"{path.name}: {key} is not a knob of {schema.__name__}"
    for key, value in set_here.items():
        if key != "toy":
            assert value != knobs[key], f"{path.name}: {key}: {value} restates {schema.__name__}'s default"
    composed_node = OmegaConf.to_container(composed(f"method={name}", "data=dump").method)  # no toy sizes
    assert set(composed_node) == {f.name for f in dataclasses.fields(schema)}
    for key, value in _leaves({k: v for k, v in composed_node.items() if k != "_target_"}):
        if key not in set_here:
            assert value == knobs[key], f"method.{key}={value} but {schema.__name__}'s default is {knobs[key]}"
    assert all(f.metadata.get("help") for f in dataclasses.fields(schema) if not f.name.startswith("_"))


def test_d_loss_names_are_the_losses_that_exist():
    from gad import losses
    from gad.config.method import DISCRIMINATOR_LOSS_NAMES

    assert set(DISCRIMINATOR_LOSS_NAMES) == set(losses.DISCRIMINATOR_LOSSES)


def test_a_method_without_toy_sizes_is_refused_on_the_toy_world():
    cfg = composed()
    cfg.method.toy = {}
    with pytest.raises(GADError, match=r"method\.toy: .* has no toy sizes"):
        validate(cfg)


def test_the_toy_verifier_arm_composes_and_validates():
    """conf/arm/verifier.yaml: GAD + the toy checker as a reward term (gad.rewards), a target gad.trust knows."""
    from gad.trust import RECEIVED_TARGETS

    cfg = composed("arm=verifier")
    validate(cfg)
    assert cfg.method.rewards.checker._target_ in RECEIVED_TARGETS
