"""Named presets: configs registered under the reference model names, picked by name."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from models.config import renamed

PRESETS: dict[str, Any] = {}


def register(name: str, config) -> None:
    if name in PRESETS:
        raise ValueError(f"preset {name!r} is registered twice")
    PRESETS[name] = config


def get_config(name_or_config, **overrides):
    """A preset by name (or a config object), with fields replaced by ``overrides``."""
    if isinstance(name_or_config, str):
        if name_or_config not in PRESETS:
            raise ValueError(f"unknown preset {name_or_config!r}; valid presets: {', '.join(sorted(PRESETS))}")
        config = PRESETS[name_or_config]
    elif dataclasses.is_dataclass(name_or_config):
        config = name_or_config
    else:
        raise TypeError(f"expected a preset name or a config dataclass, got {type(name_or_config).__name__}")
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"{type(config).__name__} has no field(s) {unknown}; valid fields: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(type(config))
    checked = {name: check_type(value, hints[name], f"{type(config).__name__}.{name}") for name, value in overrides.items()}
    return dataclasses.replace(config, **checked)


def check_type(value, annotation, what: str):
    """``value`` as the dataclass field type ``annotation`` expects (an int is accepted for a float
    field), or a ValueError that names the field and the type."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is int and isinstance(value, bool):
            continue
        origin = typing.get_origin(option) or option
        if origin is tuple and isinstance(value, list):  # JSON has lists only
            return tuple(value)
        if origin is not type(None) and isinstance(origin, type) and isinstance(value, origin):
            return value
    expected = " or ".join("null" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)
    raise ValueError(f"{what} must be {expected}, got {value!r} ({type(value).__name__})")


# Config classes that are not presets (a classifier wraps a preset's config), by class name.
_CLASSES: dict[str, type] = {}


def register_class(cls: type) -> None:
    _CLASSES[cls.__name__] = cls


def config_classes() -> dict[str, type]:
    return {**{type(c).__name__: type(c) for c in PRESETS.values()}, **_CLASSES}


def config_to_dict(config) -> dict:
    """A config as JSON-able data with its class name (``preset_class``), nested configs too."""
    fields = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        fields[f.name] = config_to_dict(value) if dataclasses.is_dataclass(value) else value
    return {"preset_class": type(config).__name__, **fields}


def config_from_dict(record: dict, **overrides):
    """Inverse of :func:`config_to_dict`; ``overrides`` replace top-level fields. Records saved
    before the shared shape vocabulary load through its rename table (``models.config.RENAMED``)."""
    classes = config_classes()
    name = record.get("preset_class")
    if name not in classes:
        raise ValueError(f"unknown model config class {name!r}; known: {', '.join(sorted(classes))}")
    fields = renamed({k: config_from_dict(v) if isinstance(v, dict) and "preset_class" in v else v
                      for k, v in record.items() if k != "preset_class"})
    return classes[name](**{**fields, **overrides})
