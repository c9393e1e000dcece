"""LoRA (Hu et al. 2021): low-rank adapters beside the frozen weights of a model's dense layers.

A config's ``lora_rank`` > 0 gives every :class:`models.layers.Dense` of its ``lora_targets``
("attention": query, key, value, out; "mlp": fc, proj; "all") two more parameters next to its
``kernel``: ``kernel_lora_a`` [inputs, rank] (He-uniform) and ``kernel_lora_b`` [rank, outputs]
(zeros: a run starts from the base model's function), and adds ``x A B * alpha / rank`` to its
product. The layout and the initialisers are qwix's ``LoraProvider``'s; the layers write them
themselves because qwix 0.1.8 does not fit here: under our sharded initialisation it applies a
multi-axis kernel's partitioning ([embed, heads, kv]) to the rank-2 adapters and fails, and it
has no merge and no notion of which parameters train. Those are here: :func:`trainable` (the
adapters, and a task's new head), :func:`merge` (``W + A B * alpha / rank`` in the kernel's
own axes) and :func:`merged_config`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

TARGETS = ("attention", "mlp", "all")  # a config's lora_targets (models.layers.lora_of)
ADAPTERS = ("kernel_lora_a", "kernel_lora_b")


def _name(path) -> str:
    return getattr(path[-1], "key", str(path[-1]))


def trainable(params, heads=("head",)) -> dict:
    """A tree of booleans over ``params``: True for the adapters and for the top-level parts named
    ``heads`` (a classifier's new head), False for the frozen base."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: _name(path) in ADAPTERS or getattr(path[0], "key", None) in heads, params)


def count(params) -> int:
    """The adapters' parameters."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return sum(int(x.size) for path, x in leaves if _name(path) in ADAPTERS)


def merge(params, config) -> dict:
    """``params`` with every adapter folded into its kernel, ``W + A B * alpha / rank`` (computed
    in fp32, stored in the kernel's dtype), and the adapters dropped: the parameters of
    :func:`merged_config`'s model, which computes the adapted function."""
    scale = config.lora_alpha / config.lora_rank

    def fold(tree):
        if not isinstance(tree, dict):
            return tree
        out = {k: fold(v) for k, v in tree.items() if k not in ADAPTERS}
        if ADAPTERS[0] in tree:
            kernel, a, b = tree["kernel"], tree[ADAPTERS[0]], tree[ADAPTERS[1]]
            # A [..., inputs, rank] and B [..., rank, outputs]; a scanned stack has a leading layers axis
            delta = jnp.einsum("...ir,...ro->...io", a.astype(jnp.float32), b.astype(jnp.float32)) * scale
            out["kernel"] = (kernel.astype(jnp.float32) + delta.reshape(kernel.shape)).astype(kernel.dtype)
        return out

    return fold(params)


def merged_config(config):
    """The model config of :func:`merge`'s parameters: the same model without adapters (a
    classifier's body likewise)."""
    if hasattr(config, "body"):
        return dataclasses.replace(config, body=merged_config(config.body))
    return dataclasses.replace(config, lora_rank=0)


def merged(config, params) -> tuple:
    """``(config, params)`` of a model with adapters as the plain model computing its function;
    any other model as it is."""
    if not adapter_config(config).lora_rank:
        return config, params
    return merged_config(config), merge(params, adapter_config(config))


def adapter_config(config):
    """The config that carries the adapters' settings: the model's, or a classifier's body's."""
    return config.body if hasattr(config, "body") else config
