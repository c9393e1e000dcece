"""The train state and the jitted train and eval steps."""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

import models
from train import sharding


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any  # the model's other variable collections (batch statistics), {} for most

    def variables(self) -> dict:
        return {"params": self.params, **self.model_state}


def boxed_param_shapes(module):
    """Parameter shapes with their logical axis names (``nn.Partitioned`` leaves), from shapes alone."""
    return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"])


def params_sharding(module, mesh):
    """Where each parameter lives on the mesh, from the logical axis names the model gives it."""
    return sharding.logical_shardings(boxed_param_shapes(module), mesh)


def variables_sharding(module, variables, mesh) -> dict:
    """Where a model's ``variables`` live: parameters by their logical axis names, the model state
    (a classifier head's batch statistics) replicated."""
    state = {k: v for k, v in variables.items() if k != "params"}
    return {"params": params_sharding(module, mesh), **jax.tree.map(lambda _: sharding.replicated(mesh), state)}


def state_shardings(module, tx, mesh) -> TrainState:
    """Where the train state lives: parameters by their logical axis names; optimizer statistics
    follow the parameters they belong to; everything else (the model state) is replicated."""
    param_shardings = params_sharding(module, mesh)
    abstract = jax.eval_shape(lambda: models.init_variables(module, jax.random.key(0)))
    abstract_opt = jax.eval_shape(tx.init, abstract["params"])
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731  a part the optimizer keeps no state for (LoRA)
    opt_shardings = optax.tree_map_params(
        tx, lambda x, s: x if masked(x) else s, abstract_opt, param_shardings,
        transform_non_params=lambda _: sharding.replicated(mesh), is_leaf=masked,
    )
    model_state = jax.tree.map(lambda _: sharding.replicated(mesh), {k: v for k, v in abstract.items() if k != "params"})
    return TrainState(step=sharding.replicated(mesh), params=param_shardings, opt_state=opt_shardings,
                      model_state=model_state)


def init_state(module, tx, rng, mesh):
    """Initialise parameters, optimizer state and model state directly in their sharded layout;
    returns the state and its shardings (:func:`state_shardings`)."""
    shardings = state_shardings(module, tx, mesh)

    def init(r):
        variables = models.init_variables(module, r)
        params = variables.pop("params")
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          model_state=variables)

    return jax.jit(sharding.with_axis_rules(init, mesh), out_shardings=shardings)(rng), shardings


def frozen_arrays(task, mesh):
    """``(loss, arrays)``: arrays a task's loss reads but never trains (a distillation teacher's
    variables, ``task.frozen(mesh)``), passed to the jitted steps as an argument rather than
    compiled in as constants, and the loss that takes them; ``(task.loss, None)`` for most tasks."""
    if not hasattr(task, "frozen"):
        return task.loss, None

    def loss(module, variables, batch, rng, deterministic, frozen):
        return task.loss(module, variables, batch, rng, deterministic, frozen=frozen)

    return loss, task.frozen(mesh)


def make_train_step(module, task, tx, base_rng, shardings, mesh, grad_accum: int, trainable=None):
    """One optimizer update from a batch of shape [grad_accum, micro_batch, ...].

    Gradients are averaged over the microbatches (a ``lax.scan``, so memory holds one
    microbatch's activations; no scan when there is one); the model state (batch statistics)
    passes from one microbatch to the next. Dropout keys are derived from the step, so a
    resumed run draws the same dropout masks as an uninterrupted one. The state is donated.
    The step is traced under the mesh and the axis rules, so the models' activation
    constraints take effect. Its metrics (the task's sums and ``grad_norm``) stay on the device:
    reading one blocks until the step is done.

    ``base_rng`` is an argument of the compiled step, not a constant in it, so runs that differ
    only in their seed share one compilation (XLA's persistent cache). ``trainable`` (booleans
    like the parameters; None: all) names the parameters that can train at all in this run (a
    frozen body's, LoRA's base): the others get no gradient computed (a zero), so a frozen body
    costs no backward pass.
    """
    task_loss, frozen = frozen_arrays(task, mesh)

    def step(state: TrainState, batch, base_rng, *frozen):
        rng = jax.random.fold_in(base_rng, state.step)
        step_loss = functools.partial(task_loss, frozen=frozen[0]) if frozen else task_loss

        def micro_grads(i, mb, model_state):
            def loss(params):
                if trainable is not None:
                    params = jax.tree.map(lambda t, x: x if t else jax.lax.stop_gradient(x), trainable, params)
                return step_loss(module, {"params": params, **model_state}, mb, jax.random.fold_in(rng, i), False)

            (_, (sums, model_state)), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
            return (grads, sums), model_state

        first = jax.tree.map(lambda x: x[0], batch)
        if grad_accum == 1:  # no scan: XLA may then fuse the backward pass with the update
            (grads, sums), model_state = micro_grads(0, first, state.model_state)
        else:
            def micro(carry, xs):
                totals, model_state = carry
                summands, model_state = micro_grads(*xs, model_state)
                return (jax.tree.map(jnp.add, totals, summands), model_state), None

            zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(micro_grads, 0, first, state.model_state)[0])
            ((grads, sums), model_state), _ = jax.lax.scan(
                micro, (zeros, state.model_state), (jnp.arange(grad_accum), batch))
            grads = jax.tree.map(lambda g: g / grad_accum, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        sums["grad_norm"] = optax.tree.norm(grads)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state), sums

    batch_sh, rng_sh = sharding.batch_sharding(mesh, leading=1), NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(sharding.with_axis_rules(step, mesh), in_shardings=(shardings, batch_sh, rng_sh, *_shardings_of(frozen)),
                     out_shardings=(shardings, None), donate_argnums=0)
    return _bind(jitted, frozen, base_rng)


def make_eval_step(module, task, variable_shardings, mesh):
    """Summed statistics of one eval batch (no dropout), from the model's variables
    (``{"params": ..., **model_state}``; ``variable_shardings`` laid out alike)."""
    task_loss, frozen = frozen_arrays(task, mesh)

    def step(variables, batch, *frozen):
        extra = {"frozen": frozen[0]} if frozen else {}
        return task_loss(module, variables, batch, jax.random.PRNGKey(0), True, **extra)[1][0]

    return _bind(jax.jit(sharding.with_axis_rules(step, mesh),
                         in_shardings=(variable_shardings, sharding.batch_sharding(mesh), *_shardings_of(frozen))), frozen)


def _shardings_of(frozen) -> tuple:
    return () if frozen is None else (jax.tree.map(lambda x: x.sharding, frozen),)


def _bind(jitted, frozen, *leading):
    """The jitted step as ``(first, batch) -> ...`` (and ``.lower(first, batch)``), passing
    ``leading`` and then ``frozen`` as its last arguments."""
    args = (*leading, *(() if frozen is None else (frozen,)))
    return _Bound(jitted, args) if args else jitted


class _Bound:
    """A jitted (or compiled) step with its last arguments bound; ``lower(...).compile()`` gives
    one bound alike, so ahead-of-time callers call it as ``(first, batch)`` too."""

    def __init__(self, jitted, args):
        self.jitted, self.args = jitted, args

    def __call__(self, first, batch):
        return self.jitted(first, batch, *self.args)

    def lower(self, first, batch):
        return _BoundLowered(self.jitted.lower(first, batch, *self.args), self.args)

    def __getattr__(self, name):  # the compiled step's analyses (memory_analysis, cost_analysis, ...)
        return getattr(self.jitted, name)


class _BoundLowered:
    def __init__(self, lowered, args):
        self.lowered, self.args = lowered, args

    def compile(self):
        return _Bound(self.lowered.compile(), self.args)

    def __getattr__(self, name):  # as_text, cost_analysis, ...
        return getattr(self.lowered, name)
