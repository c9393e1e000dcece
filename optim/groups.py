"""Parameter groups: by regular expressions over parameter paths (``blocks/attn/query/kernel``),
or by depth, a pytree of integers that the model families give (``models.param_depths``)."""

from __future__ import annotations

import re

import jax
import numpy as np


def param_paths(params) -> list[str]:
    """The ``/``-joined path of every leaf, in ``jax.tree`` order."""
    return [path_str(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def path_mask(params, pattern: str):
    """A pytree of bools, True where the leaf's path matches ``pattern`` (``re.search``)."""
    regex = re.compile(pattern)
    return jax.tree_util.tree_map_with_path(lambda path, _: bool(regex.search(path_str(path))), params)


def per_slice(values, leaf):
    """``values``, one per leading slice of ``leaf`` (shape a prefix of ``leaf.shape``), reshaped
    to broadcast against ``leaf``: a scalar for a whole array, ``[layers]`` for a stacked one."""
    return values.reshape(values.shape + (1,) * (leaf.ndim - values.ndim))


def check_depths(depths, params=None) -> int:
    """Validate a depth tree (non-negative integers, each leaf's shape a prefix of its parameter's
    shape when ``params`` are given) and return the top depth."""
    leaves = jax.tree.leaves(depths)
    if not leaves:
        raise ValueError("the depth tree is empty")
    for leaf in leaves:
        leaf = np.asarray(leaf)
        if not np.issubdtype(leaf.dtype, np.integer) or (leaf < 0).any():
            raise ValueError(f"depths must be non-negative integers, got {leaf!r}")
    if params is not None:
        flat, treedef = jax.tree_util.tree_flatten_with_path(params)
        if jax.tree.structure(depths) != treedef:
            missing = sorted(set(param_paths(params)) - set(param_paths(depths)))
            extra = sorted(set(param_paths(depths)) - set(param_paths(params)))
            raise ValueError(
                "the depth tree does not match the parameters"
                + (f"; no depth for {missing[:5]}" if missing else "")
                + (f"; depths for parameters that do not exist: {extra[:5]}" if extra else "")
                + ". Compute the depths from the same model (models.param_depths(config, params))."
            )
        for (path, p), d in zip(flat, leaves):
            shape, prefix = tuple(np.shape(p)), np.shape(d)
            if shape[: len(prefix)] != prefix:
                raise ValueError(
                    f"depths of {path_str(path)} have shape {prefix}, not a prefix of the parameter's shape {shape}"
                )
    return int(max(np.max(leaf) for leaf in leaves))
