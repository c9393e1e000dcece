"""AdamW with global-norm clipping and decoupled weight decay on the matrices only."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optim.groups import path_mask, per_slice

# Biases, LayerNorm gains and embedding tables are not decayed (as in GPT-2 and BERT training).
NO_DECAY = r"(bias|scale|embedding)$"


def decay_mask(params, no_decay: str = NO_DECAY):
    """True for the leaves that weight decay applies to."""
    return jax.tree.map(lambda skip: not skip, path_mask(params, no_decay))


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Scale the gradients by min(1, max_norm / ||g||), so their global norm is at most max_norm.

    optax's version divides every element by the norm; multiplying by one scalar instead lets
    XLA fuse the scaling into each consumer rather than write the clipped gradients out. The two
    agree to rounding.
    """

    def update(updates, state, params=None):
        del params
        scale = jnp.minimum(1.0, max_norm / optax.tree.norm(updates))
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class ScaleByAdamState(NamedTuple):
    count: jax.Array  # updates so far, the bias correction's step when no step_counts are given
    mu: Any
    nu: Any


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformationExtraArgs:
    """Adam's update direction (Kingma & Ba 2015) with a bias-correction step count per parameter slice.

    ``optax.scale_by_adam`` corrects every moment with one step count for the whole tree. A
    parameter that starts training late (gradual unfreezing) has moments that have seen fewer
    steps than that count, so its first corrected update would have the wrong size. ``update``
    takes the optional extra argument ``step_counts`` (what ``optim.gradual_unfreezing`` passes):
    a pytree like the parameters whose leaves hold each slice's own count, with a shape that is a
    prefix of the parameter's. Without it the state's count serves every parameter, and the
    result equals ``optax.scale_by_adam(b1, b2, eps)``'s to rounding (a few ulp).
    """

    def init(params):
        zeros = functools.partial(jax.tree.map, jnp.zeros_like)
        return ScaleByAdamState(jnp.zeros([], jnp.int32), zeros(params), zeros(params))

    def update(updates, state, params=None, *, step_counts=None, **extra_args):
        del params, extra_args
        mu = jax.tree.map(lambda g, m: (1 - b1) * g + b1 * m, updates, state.mu)
        nu = jax.tree.map(lambda g, v: (1 - b2) * (g**2) + b2 * v, updates, state.nu)
        count = optax.safe_increment(state.count)
        counts = jax.tree.map(lambda _: count, updates) if step_counts is None else step_counts

        def direction(m, v, n):
            m_hat = m / per_slice(1 - b1**n, m).astype(m.dtype)
            v_hat = v / per_slice(1 - b2**n, v).astype(v.dtype)
            return m_hat / (jnp.sqrt(v_hat) + eps)

        return jax.tree.map(direction, mu, nu, counts), ScaleByAdamState(count, mu, nu)

    return optax.GradientTransformationExtraArgs(init, update)


def adamw(
    learning_rate,
    *,
    weight_decay: float = 0.1,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-8,
    clip_norm: float | None = 1.0,
    no_decay: str | None = NO_DECAY,
) -> optax.GradientTransformationExtraArgs:
    """Clipping, then ``optax.adamw``'s update with :func:`scale_by_adam` (per-slice step counts
    when given). ``learning_rate`` is a float or an optax schedule of the update count. The state
    has the layout of ``optax.adamw``'s, so checkpoints written with it still restore."""
    mask = functools.partial(decay_mask, no_decay=no_decay) if no_decay else None
    chain = [clip_by_global_norm(clip_norm)] if clip_norm else []
    chain.append(optax.chain(
        scale_by_adam(b1, b2, eps),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    ))
    return optax.chain(*chain)
