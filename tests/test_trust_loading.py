"""Files received from someone else never run code: a planted pickle in a checkpoint, or a config.yaml
naming a function to call, is refused with one line naming the file, and the planted code never runs.

Every hostile run folder is a copy of a real toy run with one thing changed; the plant would create
a marker file when executed. Each entry point is tried: src/eval.py (a model spec and select.run),
gad.runs.load_module, gad.analysis.load_discriminator, train.py ckpt_path= and the FSDP strategy's own
checkpoint loading (a file and a sharded folder).
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, assert_one_line_error, run_entry, train

from gad.errors import GADError
from gad.runs import load_module
from gad.trust import RECEIVED_SECTIONS, RECEIVED_TARGETS, check_sharded_checkpoint, load_checkpoint

ID_SPLIT = ROOT / "data/toy/test_id.jsonl"


class Plant:
    """Unpickling this runs `touch <marker>`: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("train"), "callbacks.step_checkpoint.every_n_steps=3")


def hostile_copy(run: Path, where: Path, kind: str) -> tuple[Path, Path, Path]:
    """(run folder, marker, the file that should be named) for one kind of plant."""
    folder = where / f"received_{kind}"
    shutil.copytree(run, folder)
    marker = where / f"marker_{kind}"
    config = folder / "config.yaml"
    if kind == "pickle":  # every checkpoint carries the plant beside its real contents
        for ckpt in (folder / "checkpoints").glob("*.ckpt"):
            state = torch.load(ckpt, weights_only=True)
            torch.save({**state, "planted": Plant(marker)}, ckpt)
        return folder, marker, folder / "checkpoints" / "last.ckpt"
    cfg = yaml.safe_load(config.read_text())
    if kind == "os_system":
        cfg["model"]["student"] = {"_target_": "os.system", "_args_": [f"touch {marker}"]}
    else:  # torch_load: a config that asks for an unsafe load of a file in the same folder
        torch.save(Plant(marker), folder / "payload.pt")
        cfg["model"]["student"] = {"_target_": "torch.load", "f": str(folder / "payload.pt"), "weights_only": False}
    config.write_text(yaml.safe_dump(cfg))
    return folder, marker, config


KINDS = ["pickle", "os_system", "torch_load"]


@pytest.mark.parametrize("kind", ["pickle", "torch_load"])  # os_system takes the same path as torch_load
def test_eval_refuses_a_received_run(run, tmp_path, kind):
    folder, marker, named = hostile_copy(run, tmp_path, kind)
    proc = run_entry(
        "eval.py",
        f"paths.log_dir={tmp_path}/logs",
        "progress=false",
        f"models={{x: '{folder}'}}",
        f"prompt_sets={{id: '{ID_SPLIT}'}}",
        "limit=2",
    )
    assert_one_line_error(proc, str(named), "refused")
    assert not marker.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_load_module_and_load_discriminator_refuse(run, tmp_path, kind):
    from gad.analysis import load_discriminator

    folder, marker, named = hostile_copy(run, tmp_path, kind)
    for load in (load_module, load_discriminator):
        with pytest.raises(GADError, match="refused") as err:
            load(folder)
        assert str(named) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_select_refuses_planted_checkpoints(run, tmp_path):
    folder, marker, _ = hostile_copy(run, tmp_path, "pickle")
    proc = run_entry(
        "eval.py",
        f"paths.log_dir={tmp_path}/logs",
        "progress=false",
        f"select.run={folder}",
        "limit=2",
        "select.max_length_ratio=null",
    )
    assert_one_line_error(proc, str(folder / "checkpoints"), "refused", "posix.system")
    assert not marker.exists()


def test_train_resume_refuses_a_planted_checkpoint(run, tmp_path):
    folder, marker, named = hostile_copy(run, tmp_path, "pickle")
    proc = run_entry(
        "train.py",
        f"paths.log_dir={tmp_path}/logs",
        f"ckpt_path={named}",
        "callbacks.toy_accuracy=null",
        "callbacks.progress_bar=null",
        "trainer.enable_progress_bar=false",
    )
    assert_one_line_error(proc, str(named), "refused")
    assert not marker.exists()


def test_fsdp_strategy_loads_only_weights(run, tmp_path):
    """TwoNetworkFSDPStrategy.load_checkpoint used to turn Lightning's weights_only=None into False."""
    from gad.distributed import TwoNetworkFSDPStrategy

    folder, marker, named = hostile_copy(run, tmp_path, "pickle")
    with pytest.raises(GADError, match="refused.*posix.system"):
        TwoNetworkFSDPStrategy().load_checkpoint(named)
    # a sharded checkpoint folder: torch.distributed.checkpoint unpickles its .metadata with plain pickle
    shards = tmp_path / "sharded"
    shards.mkdir()
    (shards / ".metadata").write_bytes(pickle.dumps(Plant(marker)))
    with pytest.raises(GADError, match="refused.*posix.system"):
        TwoNetworkFSDPStrategy().load_checkpoint(shards)
    assert not marker.exists()


def test_real_checkpoints_and_sharded_metadata_still_load(run, tmp_path):
    import torch.distributed.checkpoint as dcp

    state = load_checkpoint(run / "checkpoints" / "last.ckpt")
    module = load_module(run)
    assert all(torch.equal(module.state_dict()[k], v) for k, v in state["state_dict"].items())
    net = torch.nn.Linear(3, 2)
    dcp.save({"model": net.state_dict(), "meta": {"step": 1}}, checkpoint_id=tmp_path / "dcp")
    check_sharded_checkpoint(tmp_path / "dcp")


def test_received_targets_cover_the_projects_own_configs():
    """Every `_target_` that conf/ can put in a run's model, method or data section is allowed."""
    found = set()
    for path in (ROOT / "conf").rglob("*.yaml"):
        text = path.read_text()
        for node in _walk(yaml.safe_load(text) or {}, path.relative_to(ROOT / "conf").parts[0]):
            found.add(node)
    assert found and found <= RECEIVED_TARGETS, sorted(found - RECEIVED_TARGETS)


def _walk(node, top: str, path: tuple = ()):
    """`_target_` values of `node` that land in a received section (a group file lands in its group)."""
    if isinstance(node, dict):
        for key, value in node.items():
            where = (top, *path) if top in RECEIVED_SECTIONS else path
            if key == "_target_" and where and where[0] in RECEIVED_SECTIONS:
                yield value
            yield from _walk(value, top, (*path, str(key)))
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value, top, path)


def test_interpolations_in_a_received_config_are_refused(run, tmp_path):
    folder = tmp_path / "received"
    shutil.copytree(run, folder)
    config = folder / "config.yaml"
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["tokenizer"]["path"] = "${oc.env:HOME}"
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(GADError, match=r"config.yaml: model.tokenizer.path: refused: an interpolation"):
        load_module(folder)
