"""Named presets: configs registered under the reference model names, picked by name."""

from __future__ import annotations

import dataclasses
from typing import Any

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
    return dataclasses.replace(config, **overrides)
