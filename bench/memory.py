"""Memory planning: the bytes per device a training configuration needs, from shapes alone.

Mode ``memory`` of ``jaxlm benchmark``. Nothing is allocated and no device of the target
kind is needed: parameter shapes come from ``jax.eval_shape``, their per-device shards from the
sharding rules (``train.sharding``) and the mesh, the optimizer state from ``jax.eval_shape`` of
the loop's AdamW, the activations from ``jax.eval_shape`` of ``jax.vjp`` of the training loss.

- ``params``, ``optimizer`` (AdamW's two moments, in the parameter dtype) and ``gradients``
  (one per parameter, sharded like it): exact.
- ``activations``: what autodiff keeps for the backward pass (``activation_terms``), for the
  per-device microbatch, the remat policy and the dropout rates: exact for JAX's residuals;
  XLA may keep more (copies it does not fuse away) or less.
- ``workspace``: an estimate of the transient buffers at the peak.

``--compile`` also compiles the real train step (``train.step``) from abstract inputs on this
machine's devices (simulated CPU devices when the mesh needs more) and reports XLA's memory
analysis next to the plan: what XLA decided on this backend, which differs from a GPU's or a
TPU's in fusion and scheduling.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import models
import optim
from train import sharding
from train.step import boxed_param_shapes
from train.tasks import LanguageModeling, pair_pretraining_loss

GIB = 1 << 30

# Memory per device (GiB), the platform, and the share JAX can use by default: on GPUs JAX
# preallocates 75% (XLA_PYTHON_CLIENT_MEM_FRACTION raises it).
DEVICES = {
    "h100-80gb": (80, "gpu", 0.75),
    "a100-80gb": (80, "gpu", 0.75),
    "a100-40gb": (40, "gpu", 0.75),
    "tpu-v4": (32, "tpu", 1.0),
    "tpu-v5e": (16, "tpu", 1.0),
    "tpu-v5p": (95, "tpu", 1.0),
    "tpu-v6e": (32, "tpu", 1.0),
}


@dataclasses.dataclass
class MemorySpec:
    model: str = "gpt2-xl"
    model_overrides: dict = dataclasses.field(default_factory=dict)
    mesh: dict = dataclasses.field(default_factory=lambda: {"data": 1})
    batch_size: int = 8  # global, over all devices and accumulation steps
    grad_accum: int = 1
    seq_len: int = 1024
    dtype: str = "float32"  # compute dtype; parameters and optimizer state stay in param_dtype
    param_dtype: str = "float32"
    remat: str = "none"
    device: str = "h100-80gb"  # a key of DEVICES, or "custom" with device_memory_gib
    device_memory_gib: float | None = None
    usable_fraction: float | None = None  # default: the device's (DEVICES)
    attention: str = "auto"  # "xla": probabilities materialised; "flash": fused (cuDNN); auto: by platform

    def __post_init__(self):
        if self.device not in DEVICES and self.device_memory_gib is None:
            raise ValueError(f"unknown device {self.device!r}: choose one of {', '.join(DEVICES)} or give "
                             "device_memory_gib (--device-memory-gib)")
        if self.attention not in ("auto", "xla", "flash"):
            raise ValueError(f"attention={self.attention!r}; choose auto, xla or flash")
        sharding.check_mesh_axes(self.mesh)
        if any(v == -1 for v in self.mesh.values()):
            raise ValueError(f"mesh {self.mesh}: give every axis's size when planning (no -1)")

    @property
    def device_count(self) -> int:
        return math.prod(self.mesh.values())

    def model_config(self):
        overrides = {"dtype": self.dtype, "param_dtype": self.param_dtype, "remat": self.remat,
                     **self.model_overrides}
        return models.get_config(self.model, **overrides)

    @property
    def capacity(self) -> tuple[float, float]:
        """(device memory in bytes, usable share of it)."""
        gib, _, share = DEVICES.get(self.device, (None, None, 1.0))
        return (self.device_memory_gib or gib) * GIB, self.usable_fraction or share

    @property
    def platform(self) -> str:
        return DEVICES.get(self.device, (0, "custom", 1))[1]


def _bytes(shape, dtype) -> int:
    return math.prod(shape) * jnp.dtype(dtype).itemsize


def state_bytes(spec: MemorySpec, mesh_sizes: dict[str, int]) -> dict:
    """Exact per-device bytes of the parameters, AdamW's state and the gradients."""
    module = spec.model_config().module()
    boxed = boxed_param_shapes(module)
    is_box = lambda x: hasattr(x, "names")  # noqa: E731
    per_device = jax.tree.map(lambda b: _bytes(sharding.shard_shape(b.value.shape, b.names, mesh_sizes), b.value.dtype),
                              boxed, is_leaf=is_box)
    params = sum(jax.tree.leaves(per_device))
    shapes = jax.tree.map(lambda b: b.value, boxed, is_leaf=is_box)
    abstract_opt = jax.eval_shape(optim.adamw(1e-3).init, shapes)
    opt = optax.tree_map_params(optim.adamw(1e-3), lambda _, b: b, abstract_opt, per_device,
                                transform_non_params=lambda x: _bytes(x.shape, x.dtype))
    total = sum(int(np.asarray(x)) for x in jax.tree.leaves(opt))
    return {"params": params, "optimizer": total, "gradients": params,
            "param_count": sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))}


SENTINEL = 13  # a batch size no parameter dimension equals: residuals that carry it are activations


def residual_shapes(config, seq_len: int, batch: int = SENTINEL) -> list:
    """What JAX's autodiff keeps from the forward pass for the backward (the leaves of
    ``jax.vjp``'s function), for the training loss of ``config`` on ``batch`` x ``seq_len``: from
    ``jax.eval_shape``, nothing computed. Remat policies and dropout change it as in training."""
    module = config.module()
    params = models.param_shapes(module)
    tokens = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)
    if config.family == "gpt":
        loss, data = LanguageModeling.loss, {"inputs": tokens, "targets": tokens}
    else:
        loss = functools.partial(pair_pretraining_loss, objective=config.sentence_task)
        pair = jax.ShapeDtypeStruct((batch,), jnp.int32)
        data = {"input_ids": tokens, "attention_mask": tokens, "token_type_ids": tokens, "mlm_labels": tokens,
                "mlm_weights": jax.ShapeDtypeStruct((batch, seq_len), jnp.float32), "pair_labels": pair,
                "pair_weights": jax.ShapeDtypeStruct((batch,), jnp.float32)}

    def backward_needs(p, data):
        return jax.vjp(lambda p: loss(module, {"params": p}, data, jax.random.PRNGKey(0), False)[0], p)[1]

    return jax.tree.leaves(jax.eval_shape(backward_needs, params, data))


def activation_terms(spec: MemorySpec, mesh_sizes: dict[str, int]) -> dict:
    """Bytes per device the backward pass keeps from the forward pass, and the transient peak.

    ``activations``: the residuals of :func:`residual_shapes` that have a batch axis (the rest
    are parameters, already counted), scaled to the per-device microbatch, one layer's times the
    depth plus the embeddings' and the head's (from models of 1 and 2 layers). Views count as
    copies (our dense layers reshape their input, which XLA does not copy), so this leans high
    without remat. With tensor parallelism
    those with a heads, MLP or vocabulary axis are split over ``model``, the hidden states
    ``[batch, length, width]`` are not. A fused attention kernel (cuDNN, for bf16 on GPUs)
    keeps no attention scores. ``workspace``: the transient buffers at the peak, which no
    residual shows: the logits' gradient (fp32), one layer recomputed under remat, and with
    fsdp one layer's weights gathered whole.
    """
    c = config = spec.model_config()
    t = mesh_sizes["model"]
    b = spec.batch_size // spec.grad_accum // sharding.batch_parallelism(mesh_sizes)
    s, itemsize = spec.seq_len, jnp.dtype(spec.dtype).itemsize

    fused = c.attn_dropout == 0 and (spec.attention == "flash" or (
        spec.attention == "auto" and spec.platform == "gpu" and spec.dtype != "float32"))

    def per_device(leaves) -> float:
        total = 0
        for x in leaves:
            if SENTINEL not in x.shape[:2]:  # a parameter (attention keeps [1, batch, heads, ...] residuals)
                continue
            if fused and x.shape[-2:] == (s, s):  # a fused kernel keeps no scores
                continue
            inner = x.shape[x.shape.index(SENTINEL) + 1:]
            split = len(inner) > 1 and (c.n_head in inner[:2] or inner[-1] in (c.d_ff, c.vocab_size))
            total += math.prod(x.shape) * x.dtype.itemsize // (t if split else 1)
        return total * b / SENTINEL

    def saved(n_layers: int, **overrides) -> float:
        """Counted on unrolled layers: a scan stacks the same residuals (XLA may add copies to stack them)."""
        unrolled = {"scan_layers": False, **({"n_groups": 1} if config.family == "albert" else {})}
        fields = {**unrolled, "n_layer": n_layers, **overrides}
        return per_device(residual_shapes(dataclasses.replace(config, **fields), s))

    one = saved(1)
    layer = saved(2) - one
    recompute = 0 if spec.remat == "none" else saved(2, remat="none") - saved(1, remat="none")
    block_params = 4 * c.d_model * c.d_model + 2 * c.d_model * c.d_ff + 9 * c.d_model + c.d_ff
    gathered = block_params * itemsize // t if mesh_sizes["fsdp"] > 1 else 0
    return {
        "per_device_microbatch": [b, s],
        "attention": "fused" if fused else "materialised",
        "per_layer_saved": int(layer),
        "activations": int(one + (c.n_layer - 1) * layer),
        "workspace": int(b * s * c.vocab_size // t * 4 + recompute + gathered),
    }


def plan(spec: MemorySpec) -> dict:
    """Bytes per device by kind, their total, and whether it fits the device."""
    mesh_sizes = sharding.mesh_shape(spec.mesh, spec.device_count)
    config = spec.model_config()
    sharding.check_batch(spec.batch_size, spec.grad_accum, mesh_sizes)
    sharding.check_divisible(boxed_param_shapes(config.module()), mesh_sizes)
    state = state_bytes(spec, mesh_sizes)
    act = activation_terms(spec, mesh_sizes)
    kinds = {k: state[k] for k in ("params", "optimizer", "gradients")}
    kinds.update(activations=act["activations"], workspace=act["workspace"])
    total = sum(kinds.values())
    memory, share = spec.capacity
    usable = memory * share
    return {
        "mode": "memory",
        "spec": dataclasses.asdict(spec),
        "mesh": mesh_sizes,
        "devices": spec.device_count,
        "param_count": state["param_count"],
        "per_device_microbatch": act["per_device_microbatch"],
        "attention": act["attention"],
        "bytes_per_device": {**kinds, "total": total},
        "gib_per_device": {k: round(v / GIB, 3) for k, v in {**kinds, "total": total}.items()},
        "device_memory_gib": memory / GIB,
        "usable_gib": usable / GIB,
        "fits": total <= usable,
        "headroom_gib": round((usable - total) / GIB, 3),
    }


def compiled_memory(spec: MemorySpec) -> dict:
    """XLA's memory analysis of the real train step compiled from abstract inputs (no
    allocation) on this process's devices, which must number the mesh's size."""
    from bench.measure import xla_memory
    from train.step import TrainState, make_train_step, state_shardings
    config = spec.model_config()
    if config.family != "gpt":
        raise ValueError("--compile compiles the causal LM step of the GPT family; plan encoders without it")
    module = config.module()
    mesh = sharding.make_mesh(spec.mesh)
    tx = optim.adamw(1e-3)
    shardings = state_shardings(module, tx, mesh)
    params = models.param_shapes(module)
    shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                        opt_state=jax.eval_shape(tx.init, params), model_state={})
    state = jax.tree.map(lambda x, where: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=where), shapes, shardings)
    step = make_train_step(module, LanguageModeling, tx, jax.random.PRNGKey(1), shardings, mesh, spec.grad_accum)
    rows = (spec.grad_accum, spec.batch_size // spec.grad_accum, spec.seq_len)
    batch = {k: jax.ShapeDtypeStruct(rows, jnp.int32, sharding=sharding.batch_sharding(mesh, leading=1))
             for k in ("inputs", "targets")}
    return {"backend": jax.default_backend(), "devices": jax.device_count(),
            "xla_memory": xla_memory(step.lower(state, batch).compile())}


def largest_batch(spec: MemorySpec) -> dict | None:
    """The plan of the largest global batch (a multiple of the data-parallel size x grad_accum)
    that fits, from two plans: per-device bytes grow linearly with the batch. None if one
    step of the smallest batch does not fit."""
    mesh_sizes = sharding.mesh_shape(spec.mesh, spec.device_count)
    unit = sharding.batch_parallelism(mesh_sizes) * spec.grad_accum
    one, two = (plan(dataclasses.replace(spec, batch_size=n * unit)) for n in (1, 2))
    if not one["fits"]:
        return None
    usable = one["usable_gib"] * GIB
    static, per_unit = one["bytes_per_device"]["total"], two["bytes_per_device"]["total"] - one["bytes_per_device"]["total"]
    n = int((usable - static) // per_unit) + 1 if per_unit > 0 else 1
    while n > 1 and not (best := plan(dataclasses.replace(spec, batch_size=n * unit)))["fits"]:
        n -= 1
    return best if n > 1 else one
