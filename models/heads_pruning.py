"""Structured attention-head pruning by importance (Michel et al. 2019, "Are Sixteen Heads Really
Better than One?"), for GPT/GPT-2 and BERT.

A config's ``pruned_heads`` lists, per layer, the original indices of the heads removed (as
transformers' ``pruned_heads``, which counts heads of the unpruned model). :func:`prune_heads`
cuts those heads out of the query, key and value projections (``[embed, heads, kv]``) and the
output projection (``[heads, kv, embed]``), so the pruned model has fewer parameters and
multiplies smaller matrices; the head width is kept.

Head importance is Michel et al.'s I_h = E_x |dL(x)/d xi_h|, xi_h a gate on head h's output, at
xi = 1. Because the gate multiplies the head's output before the output projection W_o[h],
dL/d xi_h = sum(W_o[h] * dL/dW_o[h]): the gradient of the output projection gives every head's
score without a gate in the model. Scores are normalised per layer (l2 norm), as in the paper.

Scanned layers hold one array per parameter for all layers, so every layer must keep the same
number of heads: :func:`select_heads` with ``per_layer=True`` removes the k least important of
each layer; a global selection with unequal counts is refused for scanned models (unroll them
with ``scan_layers=False``, or select per layer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from models.layers import stack_layers, unstack_layers

ATTENTION_PROJECTIONS = ("query", "key", "value")


def _check_family(config) -> None:
    """Head pruning serves GPT/GPT-2 and BERT, whose every layer has its own heads."""
    if config.family not in ("gpt", "bert"):
        raise ValueError(
            f"head pruning supports GPT/GPT-2 and BERT; {type(config).__name__} (family {config.family!r}) is not "
            "supported" + (" (its layers are shared across depth)" if config.family == "albert" else "")
        )


def normalize_pruned_heads(pruned, n_layer: int, n_head: int, scanned: bool) -> tuple[tuple[int, ...], ...]:
    """Per-layer sorted tuples of pruned head indices (``()`` when none), from a per-layer list or
    a ``{layer: heads}`` mapping (transformers' form); bad values raise a ValueError that says why."""
    if isinstance(pruned, Mapping):
        layers = [[] for _ in range(n_layer)]
        for layer, heads in pruned.items():
            layer = int(layer)
            if not 0 <= layer < n_layer:
                raise ValueError(f"pruned_heads names layer {layer}, but the model has layers 0..{n_layer - 1}")
            layers[layer] = list(heads)
        pruned = layers
    pruned = [tuple(int(h) for h in heads) for heads in pruned]
    if not any(pruned):
        return ()
    if len(pruned) != n_layer:
        raise ValueError(f"pruned_heads has {len(pruned)} entries; give one list of head indices per layer ({n_layer})")
    for layer, heads in enumerate(pruned):
        bad = [h for h in heads if not 0 <= h < n_head]
        if bad:
            raise ValueError(f"pruned_heads: layer {layer} has heads 0..{n_head - 1}; there is no head {bad[0]}")
        if len(set(heads)) != len(heads):
            raise ValueError(f"pruned_heads: layer {layer} lists a head twice ({list(heads)})")
        if len(heads) >= n_head:
            raise ValueError(f"pruned_heads removes all {n_head} heads of layer {layer}; keep at least one per layer")
    if scanned and len({len(h) for h in pruned}) > 1:
        raise ValueError(
            "scanned layers (scan_layers=True) share one shape, so each layer must lose the same number of heads; "
            f"these counts differ ({[len(h) for h in pruned]}): set scan_layers=False, or select heads per layer"
        )
    return tuple(tuple(sorted(heads)) for heads in pruned)


def layer_heads(config) -> list[int]:
    """The number of heads each layer keeps."""
    _check_family(config)
    pruned = config.pruned_heads or ((),) * config.n_layer
    return [config.n_head - len(p) for p in pruned]


def per_layer_kwargs(config) -> list[dict]:
    """``models.layers.repeat_layers``' per-layer arguments: each layer's head count."""
    return [{"n_head": h} for h in layer_heads(config)]


def _layers(config, params) -> list[dict]:
    _check_family(config)
    return unstack_layers(params, config.n_layer, config.scan_layers, "blocks")


def _with_layers(config, params, layers) -> dict:
    rest = {k: v for k, v in params.items() if k != "blocks" and not k.startswith("blocks_")}
    return {**rest, **stack_layers(layers, config.scan_layers, "blocks")}


def _replace_out_kernel(block: dict, kernel) -> dict:
    attn = block["attn"]
    return {**block, "attn": {**attn, "out": {**attn["out"], "kernel": kernel}}}


def head_importance(config, params, loss_fn: Callable, batches, *, normalize: bool = True) -> np.ndarray:
    """Michel et al.'s importance [layers, heads] of the model's current heads (in the order of its
    arrays; pruned heads are absent, and a layer with fewer heads is padded with ``inf``): the mean
    over examples of |dL(x)/d xi_h|, normalised per layer unless ``normalize=False``.

    ``loss_fn(params, batch) -> scalar`` is the mean loss of a batch (each example is passed as a
    batch of one); ``batches`` yields dicts of arrays with a leading example axis.
    """
    _check_family(config)
    names = ["blocks"] if config.scan_layers else [f"blocks_{i}" for i in range(config.n_layer)]
    outs = {name: params[name]["attn"]["out"]["kernel"] for name in names}

    def per_example(outs, example):
        def loss(outs):
            new = {**params, **{name: _replace_out_kernel(params[name], k) for name, k in outs.items()}}
            return loss_fn(new, jax.tree.map(lambda x: x[None], example))

        grads = jax.grad(loss)(outs)  # d xi_h = sum over the head's rows of W_o * dL/dW_o
        return {name: jnp.abs(jnp.sum(outs[name] * grads[name], axis=(-2, -1))) for name in outs}

    scores = jax.jit(jax.vmap(per_example, in_axes=(None, 0)))
    total, count = None, 0
    for batch in batches:
        summed = {name: np.asarray(s, np.float64).sum(0) for name, s in scores(outs, batch).items()}
        total = summed if total is None else {name: total[name] + summed[name] for name in names}
        count += len(jax.tree.leaves(batch)[0])
    if not count:
        raise ValueError("head_importance needs at least one batch of examples")
    rows = list(total["blocks"] / count) if config.scan_layers else [total[name] / count for name in names]
    if normalize:
        rows = [r / max(np.linalg.norm(r), 1e-20) for r in rows]
    width = max(len(r) for r in rows)
    return np.stack([np.pad(r, (0, width - len(r)), constant_values=np.inf) for r in rows])


def select_heads(config, importance: np.ndarray, count: int, per_layer: bool = False) -> tuple[tuple[int, ...], ...]:
    """The ``count`` least important heads (over the whole model, or ``count`` in each layer when
    ``per_layer``), as original head indices per layer, added to those already pruned."""
    _check_family(config)
    depth, n_head = config.n_layer, config.n_head
    kept = _kept_heads(config)
    if count < 0:
        raise ValueError(f"cannot prune a negative number of heads ({count})")
    fewest = min(len(k) for k in kept)
    if per_layer and count >= fewest:
        raise ValueError(f"cannot prune {count} heads from every layer: the smallest layer has {fewest} heads "
                         "and each layer must keep one")
    total = sum(len(k) for k in kept)
    if not per_layer and count > total - depth:
        raise ValueError(f"cannot prune {count} heads: the model has {total} and each of its {depth} layers "
                         f"must keep one (at most {total - depth})")
    chosen = [[] for _ in range(depth)]
    if per_layer:
        for layer, heads in enumerate(kept):
            for j in np.argsort(importance[layer][: len(heads)], kind="stable")[:count]:
                chosen[layer].append(heads[j])
    else:
        order = sorted((importance[layer][j], layer, j) for layer, heads in enumerate(kept) for j in range(len(heads)))
        left = [len(k) for k in kept]
        for _, layer, j in order:
            if sum(len(c) for c in chosen) == count:
                break
            if left[layer] > 1:  # never empty a layer
                chosen[layer].append(kept[layer][j])
                left[layer] -= 1
    previous = config.pruned_heads or ((),) * depth
    merged = [tuple(sorted((*old, *new))) for old, new in zip(previous, chosen)]
    return normalize_pruned_heads(merged, depth, n_head, config.scan_layers)


def _kept_heads(config) -> list[list[int]]:
    """Original indices of the heads each layer still has, in the order of its arrays."""
    _check_family(config)
    depth, n_head = config.n_layer, config.n_head
    pruned = config.pruned_heads or ((),) * depth
    return [[h for h in range(n_head) if h not in p] for p in pruned]


def prune_heads(config, params, pruned_heads: Sequence[Sequence[int]] | Mapping):
    """Remove heads from a model: ``pruned_heads`` per layer (or ``{layer: heads}``), original
    indices, including those already pruned -> ``(config, params)`` of the smaller model."""
    _check_family(config)
    depth, n_head = config.n_layer, config.n_head
    target = normalize_pruned_heads(pruned_heads, depth, n_head, config.scan_layers) or ((),) * depth
    current = config.pruned_heads or ((),) * depth
    for layer, (old, new) in enumerate(zip(current, target)):
        if not set(old) <= set(new):
            raise ValueError(f"layer {layer}: heads {sorted(set(old) - set(new))} are already pruned and cannot "
                             "come back; list every pruned head")
    layers = []
    for layer, (params_l, kept, drop) in enumerate(zip(_layers(config, params), _kept_heads(config), target)):
        keep = np.array([i for i, h in enumerate(kept) if h not in drop], np.int32)
        attn = dict(params_l["attn"])
        for name in ATTENTION_PROJECTIONS:
            attn[name] = {"kernel": np.asarray(attn[name]["kernel"])[:, keep], "bias": np.asarray(attn[name]["bias"])[keep]}
        attn["out"] = dict(attn["out"], kernel=np.asarray(attn["out"]["kernel"])[keep])
        layers.append(dict(params_l, attn=attn))
    new_config = dataclasses.replace(config, pruned_heads=normalize_pruned_heads(target, depth, n_head, config.scan_layers))
    return new_config, _with_layers(new_config, params, layers)


def restore_heads(config, params):
    """The unpruned shapes, the removed heads' weights all zero: the same function as the pruned
    model (a head with zero value and output projections adds nothing), for readers that know no
    ``pruned_heads`` (transformers 5 dropped head pruning)."""
    _check_family(config)
    n_head = config.n_head
    if not config.pruned_heads:
        return config, params
    full = dataclasses.replace(config, pruned_heads=())
    layers = []
    for params_l, kept in zip(_layers(config, params), _kept_heads(config)):
        attn = dict(params_l["attn"])
        for name in (*ATTENTION_PROJECTIONS, "out"):
            leaves = dict(attn[name])
            for leaf, axis in (("kernel", 0 if name == "out" else 1), ("bias", 0)):
                if name == "out" and leaf == "bias":
                    continue
                value = np.asarray(leaves[leaf])
                shape = list(value.shape)
                shape[axis] = n_head
                grown = np.zeros(shape, value.dtype)
                index = [slice(None)] * value.ndim
                index[axis] = kept
                grown[tuple(index)] = value
                leaves[leaf] = grown
            attn[name] = leaves
        layers.append(dict(params_l, attn=attn))
    return full, _with_layers(full, params, layers)
