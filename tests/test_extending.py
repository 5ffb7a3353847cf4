"""A method and a reward added from outside the project (docs/extending.md), with no file of it changed.

The test writes a plugin folder of its own: a method module (`two_stage.py`: SFT in two named stages) with its
conf/method/two_stage.yaml, and a reward module (`my_rewards.py`). With GAD_PLUGINS naming the folder, the
method trains through src/train.py at its toy sizes, shows its stages in the progress line, is refused with one
line when misconfigured, resumes to the uninterrupted run's weights, is evaluated by src/eval.py and reloads with
gad.runs.load_module; without GAD_PLUGINS, its run folder is refused like any received config naming code
this machine does not know. A reward term changes GAD's reward and is logged; a failing one is one line.
"""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import ROOT, fast_overrides, run_entry

METHOD = '''
"""SFT in two named stages: a method written outside the project."""

from dataclasses import dataclass
from enum import Enum

from gad.config.method import MethodConfig
from gad.config.typed import knob, require
from gad.methods.base import DistillModule


class Stage(Enum):
    FIRST = "first stage", 0.0
    SECOND = "second stage", 1.0

    def __init__(self, label, code):
        self.label, self.code = label, code


@dataclass
class TwoStageConfig(MethodConfig):
    steps: int = knob(2400, "training steps")
    first_steps: int = knob(1200, "steps of the first stage")

    def __post_init__(self):
        super().__post_init__()
        require(self.steps >= 1, "steps", self.steps, "must be an integer >= 1")


class TwoStageModule(DistillModule):
    Config = TwoStageConfig

    def __init__(self, config, student, tokenizer, lora=None):
        super().__init__(config, student, tokenizer, lora)
        self.steps, self.first_steps = config.steps, config.first_steps

    @property
    def total_steps(self):
        return self.steps

    def schedule(self):
        return (Stage.FIRST if self.completed_steps < self.first_steps else Stage.SECOND), False, True

    def training_step(self, batch, batch_idx):
        stage = self.schedule()[0]
        return self.end_step({"train/phase": stage.code, **self.sft_step(batch)}, batch, stage)
'''

METHOD_YAML = """
defaults:
  - /method_defaults/two_stage@_here_
  - _self_
_target_: two_stage.TwoStageModule
seed: ${seed}
toy:
  steps: 4
  first_steps: 2
  generator_optimizer: {lr: 3.0e-3}
"""

REWARDS = """
def length(prompts, responses, metas):
    assert len(prompts) == len(responses) == len(metas) and all("task" in m for m in metas)  # toy records
    return [float(len(r)) for r in responses]
"""

ID_SPLIT = ROOT / "data/toy/test_id.jsonl"
QUIET = [
    *fast_overrides("method.", "callbacks.progress_bar", "trainer.enable_progress_bar"),
    "callbacks.progress_bar.every_n_steps=1",
]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "conf" / "method").mkdir(parents=True)
    (folder / "two_stage.py").write_text(textwrap.dedent(METHOD))
    (folder / "my_rewards.py").write_text(textwrap.dedent(REWARDS))
    (folder / "conf" / "method" / "two_stage.yaml").write_text(METHOD_YAML)
    return folder


def train(log_dir: Path, plugin: Path | None, *overrides: str):
    env = {"GAD_PLUGINS": str(plugin)} if plugin else {"GAD_PLUGINS": ""}
    args = [f"paths.log_dir={log_dir}", f"paths.cache_dir={log_dir}/cache", *overrides]
    return run_entry("train.py", *args, env=env)


def run_folder(log_dir: Path) -> Path:
    return sorted((log_dir / "train" / "runs").iterdir())[-1]


def steps(run: Path) -> list[dict]:
    return [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get("train/step")]


@pytest.fixture(scope="module")
def run(plugin, tmp_path_factory) -> tuple[Path, str]:
    logs = tmp_path_factory.mktemp("logs")
    proc = train(logs, plugin, "method=two_stage", *QUIET, "callbacks.step_checkpoint.every_n_steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_folder(logs), proc.stdout


def weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def test_an_added_method_trains_at_its_toy_sizes_and_shows_its_stages(run):
    folder, stdout = run
    assert "plan: 4 steps = first stage 2 -> second stage 2" in stdout
    assert "step 3/4 (75%) · second stage" in stdout
    assert [float(r["train/phase"]) for r in steps(folder)] == [0, 0, 1, 1]
    assert (folder / "student" / "config.json").is_file()  # exported


def test_an_added_method_resumes_to_the_uninterrupted_weights(run, plugin, tmp_path):
    folder, _ = run
    proc = train(
        tmp_path, plugin, "method=two_stage", *QUIET, f"ckpt_path={folder / 'checkpoints' / 'step_000002.ckpt'}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = weights(folder), weights(run_folder(tmp_path))
    # Bit-exact on purpose: both runs ran on this machine, the same ops in the same order from the same state.
    assert a.keys() == b.keys() and not [k for k in a if not torch.equal(a[k], b[k])]


def test_an_added_method_is_refused_with_one_line_when_misconfigured(plugin, monkeypatch):
    """In this process (Hydra's plugin registers the added method's defaults at each compose); src/train.py turns
    the same GADError into one `error:` line (tests/test_config.py)."""
    from hydra import compose, initialize_config_dir

    from gad.config.validate import validate
    from gad.errors import GADError

    monkeypatch.setenv("GAD_PLUGINS", str(plugin))
    for override, message in (("method.steps=0", "method.steps=0 is invalid"), ("+method.stepz=3", "method.stepz")):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(
                "train", overrides=[f"paths.root_dir={ROOT}", "paths.output_dir=/tmp/x", "method=two_stage", override]
            )
        with pytest.raises(GADError, match=message.replace(".", r"\.")):
            validate(cfg)


def test_an_added_method_reloads_and_evaluates_and_is_refused_without_its_plugin(run, plugin, tmp_path, monkeypatch):
    from gad.errors import GADError
    from gad.runs import load_module

    folder, _ = run
    proc = run_entry(
        "eval.py",
        f"paths.log_dir={tmp_path}/logs",
        "progress=false",
        f"models={{x: '{folder}'}}",
        f"prompt_sets={{id: '{ID_SPLIT}'}}",
        "limit=2",
        env={"GAD_PLUGINS": str(plugin)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    monkeypatch.setenv("GAD_PLUGINS", str(plugin))
    module = load_module(folder)
    assert type(module).__name__ == "TwoStageModule" and module.completed_steps == 4
    monkeypatch.setenv("GAD_PLUGINS", "")
    with pytest.raises(GADError, match=r"method._target_: refused: 'two_stage.TwoStageModule'"):
        load_module(folder)


@pytest.fixture(scope="module")
def rewarded(plugin, tmp_path_factory) -> Path:
    logs = tmp_path_factory.mktemp("rewarded")
    term = "+method.rewards.length={_target_: my_rewards.length, weight: 0.1}"
    proc = train(logs, plugin, "debug=fast", "callbacks.step_checkpoint=null", term)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_folder(logs)


def test_a_reward_term_changes_the_reward_and_is_logged(rewarded):
    adversarial = [r for r in steps(rewarded) if float(r["train/phase"]) == 1]
    assert len(adversarial) == 3
    for r in adversarial:
        length, d_score = float(r["train/reward/length"]), float(r["train/reward/discriminator"])
        assert length > 0 and d_score == pytest.approx(float(r["train/student_score"]), rel=1e-5, abs=1e-6)
        assert float(r["train/reward_mean"]) == pytest.approx(d_score + 0.1 * length, rel=1e-5, abs=1e-5)
    assert json.loads((rewarded / "summary.json").read_text())["phases"]["adversarial"]["steps"] == 3


def test_a_failing_reward_term_stops_with_one_line_naming_it():
    """A term that raises, returns a NaN or returns the wrong number of values: one GADError line naming it
    (src/train.py prints a GADError as one `error:` line and exits 2)."""
    from gad.errors import GADError
    from gad.rewards import Term, evaluate

    def raising(prompts, responses, metas):
        raise ValueError("no answer")

    cases = {
        "raises": (raising, "raised ValueError: no answer"),
        "nan": (lambda p, r, m: [float("nan")] * len(r), "returned a NaN or infinite value"),
        "short": (lambda p, r, m: [1.0], "returned 1 values for 2 responses"),
    }
    for name, (fn, message) in cases.items():
        with pytest.raises(GADError, match=f"method.rewards.{name} \\(my.{name}\\) {message}") as err:
            evaluate(Term(name, f"my.{name}", fn, 1.0), ["p", "q"], ["a", "b"], [{}, {}], torch.device("cpu"))
        assert "\n" not in str(err.value)


def test_a_received_config_may_name_only_known_reward_functions():
    """Loading a run never calls its reward terms, but a received config naming a function outside the project
    (and outside any GAD_PLUGINS folder) is still refused; the toy verifier (conf/arm/verifier.yaml) is known."""
    from omegaconf import OmegaConf

    from gad.errors import GADError
    from gad.trust import check_received_config

    def received(target: str):
        return OmegaConf.create(
            {"method": {"_target_": "gad.methods.GADModule", "rewards": {"r": {"_target_": target}}}}
        )

    check_received_config(received("gad.toy.check.checker_reward"), "config.yaml")
    with pytest.raises(GADError, match=r"config.yaml: method.rewards.r._target_: refused: 'os.system'"):
        check_received_config(received("os.system"), "config.yaml")
