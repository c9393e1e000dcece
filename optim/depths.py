"""Fine-tuning by depth (Howard & Ruder 2018, ULMFiT): discriminative learning rates, freezing for
fixed feature extraction, and gradual unfreezing.

Each takes ``depths``: a pytree like the parameters whose integer leaves say which group each
parameter belongs to, 0 (the embeddings) up to ``top`` (the heads), with one entry per leading
slice where a leaf stacks several layers (shape ``[layers]`` for a ``[layers, ...]`` array, a
scalar otherwise). The model families compute them (``models.param_depths``); nothing here knows
what a model is. The depths are numpy data, fixed when the transformation is built, and every
per-step decision is made from the step count inside the jitted update, so moving from one
stage to the next never recompiles.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optim.groups import check_depths, per_slice

NEVER = np.iinfo(np.int32).max  # the start step of a group that never trains


def discriminative_rates(depths, factor: float = 2.6) -> optax.GradientTransformation:
    """Discriminative fine-tuning: scale the updates of depth ``d`` by ``factor ** -(top - d)``.

    The top group keeps the optimizer's rate and each group below moves ``factor`` times slower
    than the one above it (the paper's eta^(l-1) = eta^l / 2.6), slice by slice in stacked arrays.
    Chain it after any optimizer; it scales the whole update, weight decay included.
    """
    if not factor > 0:
        raise ValueError(f"discriminative rate factor={factor} must be positive (the paper uses 2.6; 1 is off)")
    top = check_depths(depths)
    scales = jax.tree.map(lambda d: np.power(float(factor), -(top - np.asarray(d, np.float64))).astype(np.float32),
                          depths)

    def update(updates, state, params=None):
        del params
        check_depths(depths, updates)
        return jax.tree.map(lambda u, s: u * per_slice(jnp.asarray(s), u).astype(u.dtype), updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def gradual_unfreezing(inner, depths, stage_steps: int, stages: int | None = None) -> optax.GradientTransformationExtraArgs:
    """Gradual unfreezing: stage 0 trains only the top group; each later stage, ``stage_steps``
    updates long, unfreezes the next group down, until all train.

    ``stages`` (default: one per group, ``top + 1``) caps the number of stages: the last one
    unfreezes every group still frozen. See :func:`train_from_step` for what frozen means for
    the parameters and for ``inner``'s state.
    """
    top = check_depths(depths)
    if not isinstance(stage_steps, (int, np.integer)) or stage_steps < 1:
        raise ValueError(f"gradual unfreezing needs stage_steps >= 1, got {stage_steps!r}")
    stages = top + 1 if stages is None else stages
    if not 1 <= stages <= top + 1:
        raise ValueError(
            f"{stages} unfreezing stages, but the depths form {top + 1} groups (0..{top}) and each stage unfreezes "
            f"one: use between 1 and {top + 1} stages"
        )
    start = [int(stage_steps) * min(top - d, stages - 1) for d in range(top + 1)]
    return train_from_step(inner, depths, start)


def freeze(inner, depths, below: int | None = None) -> optax.GradientTransformationExtraArgs:
    """Freeze every group below depth ``below`` (default: the top, so only the heads train: fixed
    feature extraction); ``inner`` updates the rest. See :func:`train_from_step`."""
    top = check_depths(depths)
    below = top if below is None else below
    if not 0 <= below <= top:
        raise ValueError(f"freeze below depth {below}: depths run from 0 to {top}")
    return train_from_step(inner, depths, [0 if d >= below else NEVER for d in range(top + 1)])


class TrainFromStepState(NamedTuple):
    count: jax.Array  # updates applied so far
    inner: Any


def train_from_step(inner, depths, start_steps) -> optax.GradientTransformationExtraArgs:
    """Apply ``inner`` only to the parameter slices whose group has started training: depth ``d``
    trains from update ``start_steps[d]`` on (``NEVER``: stays frozen).

    While a slice is frozen its gradient is zeroed before ``inner`` sees it (so it adds nothing to
    a global-norm clip), its update is exactly 0 (the parameter stays bit-identical), and the
    slices of ``inner``'s per-parameter state (Adam's moments) keep their values. ``inner``
    receives ``step_counts``, each slice's own update count (1 at its first trained step), so an
    Adam that honours them (``optim.scale_by_adam``, ``optim.adamw``) gives a group unfrozen at
    step s the same first update a fresh optimizer would. ``optax.scale_by_adam`` keeps one count
    for the whole tree and would not; it is refused.
    """
    check_depths(depths)
    start_steps = np.asarray(start_steps, np.int64)
    starts = jax.tree.map(lambda d: start_steps[np.asarray(d)].astype(np.int32), depths)
    inner = optax.with_extra_args_support(inner)

    def init(params):
        state = inner.init(params)
        is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731
        if any(is_adam(x) for x in jax.tree.leaves(state, is_leaf=is_adam)):
            raise ValueError(
                "optax.scale_by_adam (in optax.adam/adamw) corrects every parameter with one step count, which "
                "gives late-starting groups wrongly sized updates; build the optimizer with optim.adamw or "
                "optim.scale_by_adam, which take per-group step counts"
            )
        return TrainFromStepState(jnp.zeros([], jnp.int32), state)

    def update(updates, state, params=None, **extra_args):
        check_depths(depths, updates)
        trained = jax.tree.map(lambda s: state.count - s, starts)  # updates this slice has had; < 0: frozen
        trainable = jax.tree.map(lambda n: n >= 0, trained)
        only_trainable = lambda t, x: jnp.where(per_slice(t, x), x, jnp.zeros_like(x))  # noqa: E731
        updates = jax.tree.map(only_trainable, trainable, updates)
        counts = jax.tree.map(lambda n: jnp.maximum(n + 1, 1), trained)
        updates, new_inner = inner.update(updates, state.inner, params, step_counts=counts, **extra_args)
        updates = jax.tree.map(only_trainable, trainable, updates)
        new_inner = _keep_frozen(inner, trainable, new_inner, state.inner)
        return updates, TrainFromStepState(optax.safe_increment(state.count), new_inner)

    return optax.GradientTransformationExtraArgs(init, update)


class _NotParams:
    """Marks the parts of an optimizer state that are not per-parameter (counts, empty states)."""


def _keep_frozen(inner, trainable, new, old):
    """``inner``'s new state, with the frozen slices of its per-parameter trees taken from ``old``."""
    marker = _NotParams()
    masks = optax.tree_map_params(
        inner, lambda _, t: t, new, trainable, transform_non_params=lambda v: jax.tree.map(lambda _: marker, v),
    )
    return jax.tree.map(
        lambda m, n, o: n if m is marker else jnp.where(per_slice(m, n), n, o), masks, new, old,
        is_leaf=lambda x: x is marker,
    )
