"""The methods there are, derived from what exists: every conf/method/<name>.yaml, the project's and each
plugin folder's. Nothing here is a hand-kept list.

A method is two files (docs/extending.md):

    <module>.py                 its LightningModule (a `gad.methods.DistillModule`), whose class attribute
                                `Config` is its config dataclass (a `gad.config.method.MethodConfig`)
    conf/method/<name>.yaml     `_target_: <module>.<Class>`, what differs from the dataclass's defaults,
                                and its toy sizes (`toy:`, merged in by conf/scale/tiny_toy.yaml)

The project's own live in src/gad/methods/ and conf/method/. A plugin folder holds both files for a method
kept outside the project: put its path in GAD_PLUGINS (several: separated by `os.pathsep`); its modules are
then importable and its conf/ joins Hydra's search path (hydra_plugins/gad_plugins.py), so `method=<name>`
picks it. The configs of the project's own methods (gad/config/method.py) are found without importing torch,
so their mistakes are reported before torch loads; a plugin's `Config` is read from its module, which
imports torch first.

What a run folder received from someone else may name (gad.trust): every `_target_` that the project's
conf/ or a plugin folder's conf/ puts in a model, method or data section, the defaults of the project's
method configs (optimizers, schedules), and anything defined in a plugin folder's own modules (code this
machine's user chose to install by naming the folder).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

import gad.config.ropd  # noqa: F401  (ROPD's config, kept apart for gad/config/method.py's size: found by `target`)
from gad.config.method import MethodConfig
from gad.config.typed import defaults
from gad.errors import GADError

PLUGINS_ENV = "GAD_PLUGINS"
PROJECT_CONF = Path(__file__).resolve().parents[3] / "conf"
RECEIVED_SECTIONS = ("model", "method", "data")  # what loading a run instantiates (gad.trust, same name)


def plugin_dirs() -> list[Path]:
    """The plugin folders named by GAD_PLUGINS, importable from here on."""
    dirs = [Path(p).resolve() for p in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if p.strip()]
    for folder in dirs:
        if str(folder) not in sys.path:
            sys.path.append(str(folder))  # after the project's own: a plugin never shadows a gad module
    return dirs


def conf_dirs() -> list[Path]:
    """The project's conf/ and each plugin folder's conf/, in that order."""
    return [PROJECT_CONF, *(d / "conf" for d in plugin_dirs() if (d / "conf").is_dir())]


def method_files() -> dict[str, Path]:
    """name -> conf/method/<name>.yaml; a plugin's file never replaces the project's of the same name."""
    found: dict[str, Path] = {}
    for conf in conf_dirs():
        for path in sorted((conf / "method").glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def methods() -> dict[str, str]:
    """name -> the `_target_` its YAML names."""
    return {name: str((_load(path) or {}).get("_target_", "")) for name, path in method_files().items()}


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def config_class(target: str) -> type[MethodConfig]:
    """The config dataclass of the method module `target`. The project's own are found by their `target`
    (no torch); any other is the module class's `Config` (importing it, so torch loads first)."""
    for cls in _subclasses(MethodConfig):
        if cls.__dict__.get("target") == target:
            return cls
    from hydra.utils import get_object

    plugin_dirs()
    try:
        module = get_object(target)
    except Exception as err:
        raise GADError(f"method._target_: cannot import '{target}' ({type(err).__name__}: {err})") from None
    schema = getattr(module, "Config", None)
    if not (isinstance(schema, type) and issubclass(schema, MethodConfig)):
        raise GADError(
            f"method._target_: {target} has no `Config` class attribute naming its config dataclass "
            "(a gad.config.method.MethodConfig; docs/extending.md)"
        )
    return schema


def register_defaults() -> None:
    """Each method's defaults as the Hydra config `method_defaults/<name>`, which conf/method/<name>.yaml
    starts from (`defaults: [/method_defaults/<name>@_here_, _self_]`): every knob exists in the composed
    config (so `method.<knob>=...` overrides it) while the YAML states only what differs."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, path in method_files().items():
        node = _load(path) or {}
        if node.get("_target_"):
            store.store(group="method_defaults", name=name, node=defaults(config_class(str(node["_target_"]))))
        # The method's toy sizes, which conf/scale/tiny_toy.yaml merges in on the toy world (none: refused there)
        store.store(group="method_toy", name=name, node=dict(node.get("toy") or {}))


# ------------------------------------------------------------------------------------ received configs
def _load(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def _targets(node: Any, section: str | None) -> Iterator[str]:
    """`_target_` values of `node` that land in a received section (`section`: where `node` lands, if known)."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = section or (key if key in RECEIVED_SECTIONS else None)
            if key == "_target_" and section is not None and isinstance(value, str):
                yield value
            yield from _targets(value, here)
    elif isinstance(node, list):
        for value in node:
            yield from _targets(value, section)


def received_targets() -> frozenset[str]:
    """Every `_target_` a run folder may name (see the module docstring), for gad.trust.RECEIVED_TARGETS."""
    found: set[str] = set()
    for conf in conf_dirs():
        for path in conf.rglob("*.yaml"):
            group = path.relative_to(conf).parts[0]
            found.update(_targets(_load(path), group if group in RECEIVED_SECTIONS else None))
    for cls in _subclasses(MethodConfig):
        found.update(_targets({"method": defaults(cls)}, None))
    return frozenset(found)


def in_plugin_folder(target: str) -> bool:
    """Whether `target`'s top-level module is a file or package inside a GAD_PLUGINS folder (located without
    running it: only a top-level module's spec is looked up, which executes nothing)."""
    top = str(target).split(".")[0]
    folders = plugin_dirs()
    if not top.isidentifier() or not folders:
        return False
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    origin = spec.origin if spec is not None and spec.origin else None
    if origin is None:
        return False
    return any(Path(origin).resolve().is_relative_to(folder) for folder in folders)


class RegisteredTargets(frozenset):
    """The targets a received config may name: the listed ones (`received_targets`), or one defined in a
    plugin folder's own modules (`in_plugin_folder`, checked per name)."""

    def __contains__(self, target: object) -> bool:
        return super().__contains__(target) or isinstance(target, str) and in_plugin_folder(target)
