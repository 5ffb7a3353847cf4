"""Keys renamed since run folders were first written. A run's config.yaml from before a rename is
read with the new names (`gad.runs.run_config`): each rename kept the key's meaning and units, so
the run evaluates and reloads exactly as it was trained.
"""

from __future__ import annotations

from omegaconf import DictConfig, open_dict

# node -> {old key: new key}, for the nodes whose `_target_` is given (None: any target)
RENAMED: list[tuple[str, str | None, dict[str, str]]] = [
    # KD's softening temperature T (method.temperature is a sampling temperature everywhere else)
    ("method", "gad.methods.KDModule", {"temperature": "softening_temperature"}),
    # LR schedules count updates (optimizer steps of that network); every *_steps knob counts method steps
    *(
        (f"method.{network}_scheduler", None, {"warmup_steps": "warmup_updates", "total_steps": "total_updates"})
        for network in ("generator", "discriminator")
    ),
]


def upgrade(cfg: DictConfig) -> None:
    """Rename old keys in `cfg`, in place."""
    for path, target, names in RENAMED:
        node = cfg
        for part in path.split("."):
            node = node.get(part) if isinstance(node, DictConfig) else None
        if not isinstance(node, DictConfig) or (target is not None and node.get("_target_") != target):
            continue
        for old, new in names.items():
            if old in node and new not in node:
                with open_dict(node):
                    node[new] = node.pop(old)


def renamed_to(key: str) -> str | None:
    """The new name of `key` (a full dotted key, e.g. `method.generator_scheduler.warmup_steps`) if it
    is an old name in some node, and the target it was renamed for, if only one: for the error line of
    an override that uses it; None otherwise."""
    path, _, name = key.rpartition(".")
    for node, target, names in RENAMED:
        if node == path and name in names:
            return f"{path}.{names[name]}" + (f" (for {target})" if target else "")
    return None
