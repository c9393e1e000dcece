"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"), as an optax transformation.

Every ``every`` steps from ``begin_step`` to ``end_step`` the smallest-magnitude weights of each
pruned tensor are masked, up to the sparsity of the polynomial schedule

    s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_end - t_0)) ** 3,

which prunes quickly at first, while the network still has many redundant weights, and slowly
near the end. The masks live in the optimizer state, so checkpoints and resumption carry them
like Adam's moments; the transformation goes last in the chain and rewrites the updates so that
a masked weight becomes exactly 0 (``p + (-p)``) and stays 0. The masks are one bool per
parameter (every leaf has one, all True where nothing is pruned, so they shard like the
parameters). Thresholds are per tensor, or per slice of its leading axis for parameters that
stack several layers in one array (``stacked``).

Unstructured sparsity makes nothing faster on dense hardware: the zeros are still multiplied.
"""

from __future__ import annotations

import dataclasses
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optim.groups import path_str

# The matrices of the transformer blocks (attention and MLP); embeddings, biases and LayerNorm gains are kept.
DEFAULT_PATTERN = r"blocks.*/kernel$"


@dataclasses.dataclass(frozen=True)
class PruningConfig:
    """Zhu & Gupta's schedule: sparsity ``initial_sparsity`` at ``begin_step`` rising to
    ``target_sparsity`` at ``end_step``, masks recomputed every ``every`` steps in between, for
    the parameters whose path (``blocks_0/attn/query/kernel``) matches ``pattern``."""

    target_sparsity: float
    begin_step: int = 0
    end_step: int = 1000
    every: int = 100
    initial_sparsity: float = 0.0
    pattern: str = DEFAULT_PATTERN

    def __post_init__(self):
        for name in ("target_sparsity", "initial_sparsity"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"pruning {name}={value} must lie in [0, 1): the fraction of weights set to zero")
        if self.initial_sparsity > self.target_sparsity:
            raise ValueError(f"pruning initial_sparsity={self.initial_sparsity} exceeds "
                             f"target_sparsity={self.target_sparsity}; the schedule only prunes more")
        if not 0 <= self.begin_step <= self.end_step:
            raise ValueError(f"pruning needs 0 <= begin_step <= end_step, got {self.begin_step} and {self.end_step}")
        if self.every < 1:
            raise ValueError(f"pruning every={self.every} must be at least 1 (steps between mask updates)")
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"pruning pattern {self.pattern!r} is not a regular expression ({e})") from None

    def sparsity(self, step):
        """The schedule's sparsity at ``step`` (0 before ``begin_step``, the target after ``end_step``)."""
        span = max(self.end_step - self.begin_step, 1)
        progress = jnp.clip((step - self.begin_step) / span, 0.0, 1.0)
        s = self.target_sparsity + (self.initial_sparsity - self.target_sparsity) * (1.0 - progress) ** 3
        return jnp.where(step < self.begin_step, 0.0, s)

    def updates_masks(self, step):
        """Whether the masks are recomputed at ``step``: every ``every`` steps from begin to end, and at end."""
        inside = (step >= self.begin_step) & (step <= self.end_step)
        return inside & (((step - self.begin_step) % self.every == 0) | (step == self.end_step))


class PruningState(NamedTuple):
    count: jax.Array  # updates applied so far
    masks: optax.Params  # True: kept; one bool array per parameter


def magnitude_masks(weights, sparsity, slice_axes: int = 0):
    """True for the weights kept: in each slice over the first ``slice_axes`` axes, the
    ``round(sparsity * n)`` of smallest magnitude are dropped (exactly that many; ties by position)."""
    rows = int(np.prod(weights.shape[:slice_axes]))
    flat = jnp.abs(weights.reshape(rows, -1))
    n = flat.shape[1]
    ranks = jnp.argsort(jnp.argsort(flat, axis=1, stable=True), axis=1)  # 0 = smallest magnitude
    drop = jnp.round(sparsity * n).astype(jnp.int32)
    return (ranks >= drop).reshape(weights.shape)


def magnitude_pruning(config: PruningConfig, stacked: str | None = None) -> optax.GradientTransformation:
    """The pruning transformation; chain it after the optimizer (it needs the final updates).

    ``stacked``: a regex of the paths whose leading axis stacks independent layers (``nn.scan``),
    which are then pruned layer by layer rather than over the whole array.
    """
    pattern = re.compile(config.pattern)
    stacked_re = re.compile(stacked) if stacked else None

    def pruned(path) -> bool:
        return bool(pattern.search(path_str(path)))

    def slice_axes(path) -> int:
        return int(bool(stacked_re and stacked_re.search(path_str(path))))

    def init(params):
        return PruningState(jnp.zeros((), jnp.int32), jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("magnitude_pruning needs the parameters: call tx.update(grads, state, params)")
        step = state.count

        def recompute():
            candidate = jax.tree.map(lambda p, u, m: jnp.where(m, p + u, 0), params, updates, state.masks)
            return jax.tree_util.tree_map_with_path(
                lambda path, w, m: magnitude_masks(w, config.sparsity(step), slice_axes(path)) if pruned(path) else m,
                candidate, state.masks,
            )

        masks = jax.lax.cond(config.updates_masks(step), recompute, lambda: state.masks)
        updates = jax.tree.map(lambda p, u, m: jnp.where(m, u, -p).astype(u.dtype), params, updates, masks)
        return updates, PruningState(step + 1, masks)

    return optax.GradientTransformation(init, update)


def sparsity_report(params, pattern: str = DEFAULT_PATTERN) -> dict:
    """Zero fraction of the parameters matching ``pattern`` and of all parameters."""
    regex = re.compile(pattern)
    matched = total = matched_zero = total_zero = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        zeros, size = int(np.sum(np.asarray(leaf) == 0)), int(np.size(leaf))
        total, total_zero = total + size, total_zero + zeros
        if regex.search(path_str(path)):
            matched, matched_zero = matched + size, matched_zero + zeros
    return {"pruned_params": matched, "pruned_sparsity": matched_zero / max(matched, 1),
            "overall_sparsity": total_zero / max(total, 1), "nonzero_params": total - total_zero}
