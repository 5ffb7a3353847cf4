"""Loading files a user may have received from someone else, without ever running code from them.

A checkpoint is a pickle, and unpickling can call any function the file names; a run's
config.yaml names functions too (`_target_`), which Hydra's `instantiate` calls. So:

- checkpoints load with `torch.load(weights_only=True)`: tensors, numbers, strings, lists and
  dicts only, plus `SAFE_GLOBALS` (empty: a checkpoint of this project needs nothing else). A file
  that names anything else is refused with one line naming the file and what it asked for;
- a received config (`gad.runs.run_config`) is checked before anything in it is instantiated:
  every `_target_` in the sections that loading instantiates (model, method, data) must be one of
  `RECEIVED_TARGETS`, and no value may be an interpolation (a saved config is resolved; an
  `${oc.env:...}` would read this machine's environment into a model path).

The targets themselves only build models, optimizers and data modules from plain values.
"""

from __future__ import annotations

import os
import pickle
import stat
import zipfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig

from gad.config.registry import RegisteredTargets, received_targets
from gad.errors import GADError

# Types a checkpoint may hold beyond tensors and plain Python values, for
# torch.serialization.add_safe_globals. None so far: Lightning's loop, optimizer and scheduler
# states and DistillModule.on_save_checkpoint's `distill_state` are dicts of numbers.
SAFE_GLOBALS: list[Any] = []

# Sections of a received config that loading a run instantiates (gad.fit.build_module,
# gad.evaluation.model_specs, gad.analysis.scoring); nothing instantiates the others from a run folder.
RECEIVED_SECTIONS = ("model", "method", "data")
# Every `_target_` the project's conf/ (and each GAD_PLUGINS folder's) puts in those sections, the defaults of the
# project's method configs, and anything defined in a plugin folder's own modules: derived by
# gad.config.registry from what exists, never kept by hand (tests/test_trust_loading.py checks it covers conf/).
RECEIVED_TARGETS = RegisteredTargets(received_targets())

ADVICE = "load only files from people you trust, or ask for the exported student/ folder (safetensors)"


# ---------------------------------------------------------------------------------------- checkpoints
def _allow_safe_globals() -> None:
    import torch

    torch.serialization.add_safe_globals(SAFE_GLOBALS)


def check_archive(path: str | Path) -> None:
    """Refuse (one line) anything but a regular file holding torch.save's zip archive, before a byte of
    it is unpickled: a FIFO or device would block the reader forever, and an archive whose members are
    compressed can inflate to any size in memory (torch.save stores every member uncompressed)."""
    try:
        info = os.stat(path)
    except OSError as err:
        raise GADError(f"{path}: cannot read it ({err.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise GADError(f"{path}: refused: not a regular file (a checkpoint is one file written by torch.save)")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except Exception as err:  # zipfile's parser raises BadZipFile, OSError, ValueError, NotImplementedError, ...
        raise GADError(
            f"{path}: not a readable checkpoint (truncated, or not written by torch.save: {type(err).__name__}: {err})"
        ) from None
    for member in members:
        if member.compress_type != zipfile.ZIP_STORED:
            raise GADError(
                f"{path}: refused: its member {member.filename} is compressed (torch.save stores members "
                "uncompressed; a compressed one can inflate without bound)"
            )
    claimed = sum(member.file_size for member in members)
    if claimed > info.st_size:
        raise GADError(f"{path}: refused: its members claim {claimed} bytes in a {info.st_size}-byte file")


def check_checkpoint(path: str | Path) -> None:
    """Refuse (GADError, one line) a checkpoint file whose pickle names anything beyond plain data.

    Reads the pickle's opcodes without running them, so the refusal can name what the file
    asked for; the load itself (`load_checkpoint`, or Lightning's with weights_only=True) is
    what guarantees nothing runs."""
    from torch.serialization import get_safe_globals, get_unsafe_globals_in_checkpoint

    check_archive(path)
    _allow_safe_globals()
    try:
        needed = get_unsafe_globals_in_checkpoint(path)
    except Exception as err:  # not a zip checkpoint: a truncated file, or not one of torch.save's
        raise GADError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in get_safe_globals() if hasattr(g, "__qualname__")}
    unsafe = [g for g in needed if g not in allowed]
    if unsafe:
        raise GADError(
            f"{path}: refused: loading it would call {', '.join(unsafe)} (checkpoints may hold "
            f"only tensors and plain values; {ADVICE})"
        )


def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """A checkpoint file's contents, loaded with weights_only=True (see the module docstring)."""
    import torch

    check_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as err:
        raise GADError(f"{path}: refused: {str(err).splitlines()[0]} ({ADVICE})") from None
    except Exception as err:  # a damaged archive fails anywhere in torch's reader (KeyError, RuntimeError, ...)
        text = str(err).strip().splitlines()
        raise GADError(f"{path}: not a readable checkpoint ({type(err).__name__}: {text[0] if text else ''})") from None
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise GADError(f"{path}: not a checkpoint of this project (no state_dict)")
    return state


def check_contents(state: dict, path: str | Path, expected: dict[str, Any]) -> None:
    """Refuse (one line) a loaded checkpoint whose weights do not fit the model built from its run's
    config (`expected`: that model's `state_dict()`), or whose counters are not plain numbers, before
    `load_state_dict` and `on_load_checkpoint` would fail on it with a traceback."""
    import torch

    weights = state["state_dict"]
    odd = next((k for k, v in weights.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if odd is not None:
        raise GADError(f"{path}: state_dict entry {odd!r} is not a tensor")
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        example = f"{missing[0]} missing" if missing else f"{unexpected[0]} unexpected"
        raise GADError(
            f"{path}: its weights do not fit this run's model ({len(missing)} tensors missing, "
            f"{len(unexpected)} unexpected, e.g. {example}; a checkpoint of another model?)"
        )
    for key, tensor in expected.items():
        if tuple(weights[key].shape) != tuple(tensor.shape):
            raise GADError(
                f"{path}: {key} has shape {tuple(weights[key].shape)}, the run's model has {tuple(tensor.shape)} "
                "(a checkpoint of another model?)"
            )
        if weights[key].is_floating_point() != tensor.is_floating_point():
            raise GADError(f"{path}: {key} is {weights[key].dtype}, the run's model has {tensor.dtype}")
    extra = state.get("distill_state", {})
    if not isinstance(extra, dict):
        raise GADError(f"{path}: distill_state is {type(extra).__name__}, expected a mapping of counters")
    for key, value in extra.items():
        if isinstance(value, bool) and key != "completed_steps":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise GADError(f"{path}: distill_state.{key} is {value!r}, expected a count (an integer >= 0)")


# Sharded checkpoints (TwoNetworkFSDPStrategy with save_distributed_checkpoint=true) are folders whose
# `.metadata` torch.distributed.checkpoint reads with plain pickle: it may name only these.
_DCP_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "ChunkStorageMetadata",
        "BytesStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        import torch

        if (module, name) in _DCP_GLOBALS or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"loading it would call {module}.{name}")


def check_sharded_checkpoint(folder: str | Path) -> None:
    """Refuse a sharded checkpoint folder whose pickled metadata names anything beyond
    torch.distributed.checkpoint's own metadata types (read here with an unpickler that
    cannot reach any other function)."""
    files = sorted(Path(folder).glob("*.metadata"))
    if not files:
        raise GADError(f"{folder}: not a sharded checkpoint (no .metadata file)")
    root = Path(folder).resolve()
    for entry in Path(folder).iterdir():  # shards are plain files inside the folder: no FIFO, no link out
        if not entry.resolve().is_relative_to(root):
            raise GADError(f"{entry}: refused: a link to {entry.resolve()}, outside the checkpoint folder")
        if not stat.S_ISREG(os.stat(entry).st_mode):
            raise GADError(f"{entry}: refused: not a regular file")
    for file in files:
        try:
            with open(file, "rb") as fh:
                _MetadataUnpickler(fh).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as err:
            raise GADError(
                f"{file}: refused: {str(err).splitlines()[0] if str(err) else type(err).__name__} ({ADVICE})"
            ) from None


# ---------------------------------------------------------------------------------------- configs
def _nodes(node: Any, path: str):
    """(dotted key, node) for `node` and everything under it, without resolving interpolations."""
    yield path, node
    if node._is_interpolation() or node._is_none() or node._is_missing():
        return
    if isinstance(node, DictConfig):
        for key in node.keys():
            yield from _nodes(node._get_node(key), f"{path}.{key}")
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from _nodes(node._get_node(i), f"{path}[{i}]")


def check_received_config(cfg: DictConfig, file: str | Path) -> None:
    """Refuse (one line naming the file and key) a run config that would make loading call a
    function this project does not list, or read anything through an interpolation."""
    for key in cfg.keys():
        for path, node in _nodes(cfg._get_node(key), str(key)):
            if node._is_interpolation():
                raise GADError(
                    f"{file}: {path}: refused: an interpolation ({node._value()}) in a saved run config "
                    "(train.py saves it resolved)"
                )
            if str(key) in RECEIVED_SECTIONS and path.endswith("._target_"):
                target = node._value()
                if not isinstance(target, str) or target not in RECEIVED_TARGETS:
                    raise GADError(
                        f"{file}: {path}: refused: '{target}' is not one of this project's own targets "
                        f"(a run folder may only name {', '.join(sorted(RECEIVED_TARGETS))})"
                    )
