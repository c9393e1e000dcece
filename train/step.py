"""The train state and the jitted train and eval steps."""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

import models
from train import sharding


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def params_sharding(module, mesh):
    """Where each parameter lives on the mesh, from the logical axis names the model gives it."""
    boxed = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"])
    return sharding.logical_shardings(boxed, mesh)


def init_state(module, tx, rng, mesh):
    """Initialise parameters and optimizer state directly in their sharded layout.

    Returns the state and its shardings (parameters from their logical axis names; optimizer
    statistics follow the parameters they belong to, everything else is replicated).
    """
    param_shardings = params_sharding(module, mesh)
    abstract_params = models.param_shapes(module)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_shardings = optax.tree_map_params(
        tx, lambda _, s: s, abstract_opt, param_shardings,
        transform_non_params=lambda _: sharding.replicated(mesh),
    )
    shardings = TrainState(step=sharding.replicated(mesh), params=param_shardings, opt_state=opt_shardings)

    def init(r):
        params = models.init_params(module, r)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return jax.jit(init, out_shardings=shardings)(rng), shardings


def frozen_arrays(task, mesh):
    """``(loss, arrays)``: arrays a task's loss reads but never trains (a distillation teacher's
    parameters, ``task.frozen(mesh)``), passed to the jitted steps as an argument rather than
    compiled in as constants, and the loss that takes them; ``(task.loss, None)`` for most tasks."""
    if not hasattr(task, "frozen"):
        return task.loss, None

    def loss(module, params, batch, rng, deterministic, frozen):
        return task.loss(module, params, batch, rng, deterministic, frozen=frozen)

    return loss, task.frozen(mesh)


def make_train_step(module, task, tx, base_rng, shardings, mesh, grad_accum: int):
    """One optimizer update from a batch of shape [grad_accum, micro_batch, ...].

    Gradients are averaged over the microbatches (a ``lax.scan``, so memory holds one
    microbatch's activations; no scan when there is one). Dropout keys are derived from the
    step, so a resumed run draws the same dropout masks as an uninterrupted one. The state is
    donated.
    """
    task_loss, frozen = frozen_arrays(task, mesh)

    def step(state: TrainState, batch, *frozen):
        rng = jax.random.fold_in(base_rng, state.step)
        loss = functools.partial(task_loss, frozen=frozen[0]) if frozen else task_loss
        grad_fn = jax.value_and_grad(loss, argnums=1, has_aux=True)

        def micro_grads(i, mb):
            (_, sums), grads = grad_fn(module, state.params, mb, jax.random.fold_in(rng, i), False)
            return grads, sums

        first = jax.tree.map(lambda x: x[0], batch)
        if grad_accum == 1:  # no scan: XLA may then fuse the backward pass with the update
            grads, sums = micro_grads(0, first)
        else:
            def micro(carry, xs):
                g, s = micro_grads(*xs)
                return jax.tree.map(jnp.add, carry, (g, s)), None

            zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(micro_grads, 0, first))
            (grads, sums), _ = jax.lax.scan(micro, zeros, (jnp.arange(grad_accum), batch))
            grads = jax.tree.map(lambda g: g / grad_accum, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        sums["grad_norm"] = optax.tree.norm(grads)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), sums

    batch_sh = sharding.batch_sharding(mesh, leading=1)
    return _bind(jax.jit(step, in_shardings=(shardings, batch_sh, *_shardings_of(frozen)),
                         out_shardings=(shardings, None), donate_argnums=0), frozen)


def make_eval_step(module, task, param_shardings, mesh):
    """Summed statistics of one eval batch (no dropout)."""
    task_loss, frozen = frozen_arrays(task, mesh)

    def step(params, batch, *frozen):
        extra = {"frozen": frozen[0]} if frozen else {}
        return task_loss(module, params, batch, jax.random.PRNGKey(0), True, **extra)[1]

    return _bind(jax.jit(step, in_shardings=(param_shardings, sharding.batch_sharding(mesh),
                                             *_shardings_of(frozen))), frozen)


def _shardings_of(frozen) -> tuple:
    return () if frozen is None else (jax.tree.map(lambda x: x.sharding, frozen),)


def _bind(jitted, frozen):
    """The jitted step as ``(first, batch) -> ...``, passing ``frozen`` as its last argument."""
    if frozen is None:
        return jitted
    return lambda first, batch: jitted(first, batch, frozen)
