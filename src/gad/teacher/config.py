"""Config helpers shared by the teacher-data tools."""

from __future__ import annotations

from typing import Any


def plain(cfg: Any) -> dict[str, Any]:
    """A Hydra/OmegaConf config (or a mapping) as plain Python containers, resolved.

    `paths` and `hydra` are left out: they only resolve inside a Hydra run (tests compose the
    config without one), and these tools do not read them.
    """
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover
        return dict(cfg)
    if not isinstance(cfg, DictConfig):
        return dict(cfg)
    out: dict[str, Any] = {}
    for key in cfg.keys():
        if key in ("paths", "hydra"):
            continue
        if OmegaConf.is_missing(cfg, key):
            out[str(key)] = "???"  # a mandatory value not given: the tool names it in its own message
            continue
        value = cfg[key]
        out[str(key)] = OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
    return out
