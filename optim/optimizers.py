"""AdamW with global-norm clipping and decoupled weight decay on the matrices only."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from optim.groups import path_mask

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


def adamw(
    learning_rate,
    *,
    weight_decay: float = 0.1,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-8,
    clip_norm: float | None = 1.0,
    no_decay: str | None = NO_DECAY,
) -> optax.GradientTransformation:
    """``learning_rate`` is a float or an optax schedule of the update count."""
    mask = functools.partial(decay_mask, no_decay=no_decay) if no_decay else None
    chain = [clip_by_global_norm(clip_norm)] if clip_norm else []
    chain.append(optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask))
    return optax.chain(*chain)
