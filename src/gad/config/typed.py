"""Typed configs: one dataclass per concern, validated once, before anything loads.

A concern's dataclass (e.g. `gad.config.method.GADConfig`) names every key of its config node
with a type; a method's dataclass also holds each knob's default and one-line help (`knob`, `nested`),
which the composed config starts from (`defaults`; gad.config.registry). `typed` turns a composed node
into an instance:

- OmegaConf checks each value against its field's type (an int for an `int`, a finite-or-not
  float for a `float`, ...) and refuses keys the dataclass does not declare;
- the dataclass's `__post_init__` checks ranges and cross-field rules with `require`.

Every problem becomes one `GADError` line naming the full key, e.g.
`method.temperature=0 is invalid: must be > 0`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import field
from typing import Any, TypeVar, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from gad.errors import GADError

T = TypeVar("T")


class Invalid(ValueError):
    """A value that breaks a rule of its dataclass: `field` relative to the dataclass."""

    def __init__(self, field: str, value: Any, why: str):
        super().__init__(f"{field}={value} is invalid: {why}")
        self.field, self.value, self.why = field, value, why


def require(ok: bool, field: str, value: Any, why: str) -> None:
    """A rule of a config dataclass (call it from `__post_init__`): raise `Invalid` unless `ok`."""
    if not ok:
        raise Invalid(field, value, why)


def finite(x: float | None) -> bool:
    """OmegaConf lets `inf` and `nan` through a float field; no knob of ours means either."""
    return x is None or math.isfinite(x)


def typed(schema: type[T], node: DictConfig | Mapping[str, Any], key: str) -> T:
    """`node` (the config at `key`) as an instance of the dataclass `schema`, or one `GADError` line
    naming the offending key. Hydra's own keys (`_target_`, `_partial_`) pass through when the
    dataclass declares them; interpolations are resolved."""
    prefix = f"{key}." if key else ""
    if not isinstance(node, (DictConfig, Mapping)):  # e.g. `model.lora: 3` in a received run's config
        raise GADError(f"{key}={node} is invalid: expected a mapping of {schema.__name__}'s keys")
    try:
        if isinstance(node, DictConfig):  # resolved in its own tree: `${data.max_response_tokens}` points outside it
            node = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
        _refuse_loose_booleans(schema, node, prefix)
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except Invalid as err:
        err.field = f"{_where(merged, err)}{err.field}"
        if err.value is None:  # a value the rule needs and nobody set: "method.teacher.path: set the teacher model..."
            raise GADError(f"{prefix}{err.field}: {err.why}") from None
        raise GADError(f"{prefix}{err.field}={_as_given(node, err.field, err.value)} is invalid: {err.why}") from None
    except ConfigKeyError as err:
        raise GADError(
            f"{prefix}{err.full_key}: unknown key (known: {', '.join(_fields(schema, err.full_key))})"
        ) from None
    except MissingMandatoryValue as err:
        raise GADError(f"{prefix}{err.full_key}: required, but not set") from None
    except ValidationError as err:
        raise GADError(
            f"{prefix}{err.full_key}={_as_given(node, err.full_key, '?')} is invalid: {_type_words(err)}"
        ) from None
    except OmegaConfBaseException as err:  # an interpolation that does not resolve, ...
        where = f"{prefix}{err.full_key}" if getattr(err, "full_key", None) else key
        raise GADError(f"{where}: {' '.join(str(err).splitlines()[0].split())}") from None


# ------------------------------------------------------------------ defining knobs
def knob(default: Any, help: str) -> Any:
    """A config field: its default and one line of help (a list or dict default is copied for each instance)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def nested(schema: type, help: str, **overrides: Any) -> Any:
    """A field holding another config dataclass: `schema`'s defaults, less `overrides`. Its rules run when the
    composed node is validated, not here (KD's teacher has no valid default path)."""

    def build() -> Any:
        obj = schema.__new__(schema)
        for f in dataclasses.fields(schema):
            value = overrides[f.name] if f.name in overrides else defaults(schema).get(f.name)
            object.__setattr__(obj, f.name, value)
        return obj

    return field(default_factory=build, metadata={"help": help})


def defaults(schema: type) -> dict[str, Any]:
    """Every knob of `schema` with its default, as plain values (the node Hydra composes from)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(schema):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        if f.name == "_target_" and not value:
            continue  # a method's `_target_`: named by its YAML file
        out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def _refuse_loose_booleans(schema: type, node: Any, prefix: str) -> None:
    """OmegaConf reads "yes", "on" and 1 as true; a switch given as anything but true/false is
    more likely a mistake (a value meant for another key) than a way to say true."""
    hints = get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if not isinstance(node, Mapping) and not isinstance(node, DictConfig) or f.name not in node:
            continue
        value = node[f.name]
        if hints[f.name] is bool and not isinstance(value, bool):
            raise GADError(f"{prefix}{f.name}={value} is invalid: must be true or false")
        if dataclasses.is_dataclass(hints[f.name]) and isinstance(value, (Mapping, DictConfig)):
            _refuse_loose_booleans(hints[f.name], value, f"{prefix}{f.name}.")


def _where(merged: DictConfig, err: Invalid) -> str:
    """The path (with a trailing dot) of the nested dataclass whose rule `err` broke; "" for the top one."""
    for name in merged:
        child = merged._get_node(name)
        if isinstance(child, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(child)):
            try:
                OmegaConf.to_object(child)
            except Invalid as inner:
                if inner.why == err.why and inner.field == err.field:
                    return f"{name}.{_where(child, err)}"
    return ""


def _as_given(node: DictConfig | Mapping[str, Any], field: str, default: Any) -> Any:
    """The value as the user wrote it (`0`, not the `0.0` its float field made of it)."""
    if not isinstance(node, DictConfig):
        node = OmegaConf.create(dict(node))
    try:
        value = OmegaConf.select(node, str(field), default=default, throw_on_missing=False)
    except OmegaConfBaseException:
        return default
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def _fields(schema: type, full_key: str) -> list[str]:
    """The keys the dataclass holding `full_key` declares (for the unknown-key message)."""
    cls: Any = schema
    for part in str(full_key).split(".")[:-1]:
        cls = get_type_hints(cls).get(part)
        if not dataclasses.is_dataclass(cls):
            return []
    return sorted(f.name for f in dataclasses.fields(cls) if not f.name.startswith("_"))


def _type_words(err: ValidationError) -> str:
    text = str(err).splitlines()[0]
    for name, words in (
        ("Integer", "must be an integer"),
        ("Float", "must be a number"),
        ("Boolean", "must be true or false"),
        ("String", "must be a string"),
    ):
        if f"converted to {name}" in text:
            return words
    return " ".join(text.split())
