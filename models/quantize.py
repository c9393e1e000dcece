"""Cheaper inference from a trained model, without retraining: 16-bit parameters and compute, and
int8 weights.

- :func:`cast`: parameters stored in bf16 (half the bytes) and compute in bf16. LayerNorm
  statistics, the softmax and the logits stay fp32 (``models.layers``), and so do losses.
- :func:`int8`: post-training quantization of every dense kernel and embedding table to int8,
  symmetric, with one fp32 scale per output channel (absmax). The other parameters (biases,
  LayerNorm gains) keep their dtype. Compute stays in the model's dtype: each weight is
  dequantized at its use.
- :func:`prepare`: either or both, as the scripts' ``--dtype`` and ``--quantize`` ask.

Dense kernels go through qwix's PTQ (``qwix.PtqProvider``): the quantized module intercepts each
``dot_general`` whose right operand is a parameter, and qwix's abstract tree says how to quantize
it (one scale per non-contracted axis). Two things qwix does not cover are written here: kernels
stacked by ``nn.scan`` (qwix would compute one scale across all layers' channels: each layer is
quantized on its own instead), and embedding tables, which are also lookups (``models.layers.Embed``
gathers int8 rows and their scales itself). An adaptive softmax (``models.adaptive_softmax``) takes
its shortlist from the int8 input table; its cluster and tail weights stay in their float dtype.
"""

from __future__ import annotations

import dataclasses

import flax
import jax
import jax.numpy as jnp

from models.layers import DTYPES, is_quantized

QUANTIZATIONS = ("int8",)


def param_bytes(params) -> int:
    """Bytes of a parameter tree, int8 values and their scales included."""
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params)))


def has_int8(params) -> bool:
    """Whether a parameter tree holds int8 weights (qwix ``QArray`` leaves from :func:`int8`)."""
    return any(is_quantized(x) for x in jax.tree.leaves(params, is_leaf=is_quantized))


def is_int8(module, params) -> bool:
    """Whether ``module`` / ``params`` come from :func:`int8`."""
    return hasattr(type(module), "_unquantized_type") or has_int8(params)


def cast(module, params, dtype: str):
    """``(module, params)`` with parameters stored and computing in ``dtype`` (e.g. ``bfloat16``)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; choose one of {DTYPES}")
    if is_int8(module, params):
        raise ValueError("cast the float parameters before quantizing them to int8, not after")
    config = dataclasses.replace(module.config, dtype=dtype, param_dtype=dtype)
    floating = lambda x: jnp.asarray(x, dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x  # noqa: E731
    return config.module(), jax.jit(lambda p: jax.tree.map(floating, p))(params)


def _dummy_ids():
    return jnp.zeros((1, 1), jnp.int32)


def _stacked_axes(boxed) -> int:
    """How many leading axes ``nn.scan`` stacked onto a parameter (its ``layers`` axis names)."""
    names = tuple(getattr(boxed, "names", ()))
    leading = 0
    while leading < len(names) and names[leading] == "layers":
        leading += 1
    return leading


def int8(module, params):
    """``(quantized module, int8 parameters)``: every dense kernel and embedding table int8 with
    one scale per output channel. Refuses parameters that are already quantized."""
    import qwix  # a dependency of int8 inference only (slow to import)

    if is_int8(module, params):
        raise ValueError("these parameters are already int8: quantize the float parameters, once")
    rule = qwix.QuantizationRule(op_names=("dot_general",), weight_qtype=jnp.int8)
    qmodule = qwix.quantize_model(module, qwix.PtqProvider([rule]))
    plans = flax.traverse_util.flatten_dict(jax.eval_shape(qmodule.init, jax.random.key(0), _dummy_ids())["params"])
    boxed = flax.traverse_util.flatten_dict(jax.eval_shape(module.init, jax.random.key(0), _dummy_ids())["params"])

    def quantize(path, value):
        plan = plans[path]
        if hasattr(plan, "how"):  # a kernel qwix saw in a dot_general
            how = plan.how
            fn = lambda w: qwix.quantize(  # noqa: E731
                w, how.qtype, channelwise_axes=how.channelwise_axes, tiled_axes=how.tiled_axes,
                calibration_method=how.calibration_method,
            )
            for _ in range(_stacked_axes(boxed[path])):
                fn = jax.vmap(fn)
            return plan.replace(array=fn(value))
        if path[-1] == "embedding":  # a table (Embed): one scale per row
            return qwix.quantize(value, jnp.int8, channelwise_axes=(0,))
        return value

    flat = flax.traverse_util.flatten_dict(params)
    missing = sorted("/".join(map(str, p)) for p in set(flat) ^ set(plans))
    if missing:
        raise ValueError(f"the parameters do not fit the module: {missing[:4]} differ")
    quantized = jax.jit(lambda f: {p: quantize(p, v) for p, v in f.items()})(flat)
    return qmodule, flax.traverse_util.unflatten_dict(quantized)


def prepare(module, params, dtype: str | None = None, quantize: str | None = None):
    """The inference variant the scripts' ``--dtype`` and ``--quantize`` name: parameters and
    compute cast to ``dtype`` (default: unchanged), then ``quantize="int8"`` weights."""
    if quantize not in (None, *QUANTIZATIONS):
        raise ValueError(f"quantize={quantize!r}; choose one of {QUANTIZATIONS} (or none)")
    if (dtype or quantize) and not hasattr(module.config, "dtype"):
        raise ValueError(f"--dtype and --quantize apply to the GPT, BERT and ALBERT models, not to a "
                         f"{type(module.config).__name__}; evaluate it without them")
    if dtype is not None and (dtype != module.config.dtype or dtype != module.config.param_dtype):
        module, params = cast(module, params, dtype)
    if quantize == "int8":
        module, params = int8(module, params)
    return module, params
