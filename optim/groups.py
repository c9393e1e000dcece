"""Parameter groups chosen by regular expressions over parameter paths (``blocks/attn/query/kernel``)."""

from __future__ import annotations

import re

import jax


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def path_mask(params, pattern: str):
    """A pytree of bools, True where the leaf's path matches ``pattern`` (``re.search``)."""
    regex = re.compile(pattern)
    return jax.tree_util.tree_map_with_path(lambda path, _: bool(regex.search(_path_str(path))), params)
