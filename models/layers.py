"""Pieces shared by the GPT, BERT and ALBERT families.

Every parameter carries logical axis names (``vocab``, ``embed``, ``heads``, ``kv``, ``mlp``,
``layers``) and activations are constrained to ``(batch, length, embed)``, so a device mesh and
a set of axis rules decide the sharding; the modules never mention devices.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    # The exact, erf-based GELU (BERT).
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    # The tanh approximation (GPT, GPT-2, ALBERT).
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}

# Activation names of the transformers configs, mapped to ours.
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}

DTYPES = ("float32", "bfloat16", "float16")

ATTENTION = ("xla", "cudnn")  # TransformerConfig.attention


def attention_implementation(name: str) -> str | None:
    """``jax.nn.dot_product_attention``'s ``implementation`` for a config's ``attention``: cuDNN's
    fused kernel where the default backend is a GPU, XLA's choice elsewhere."""
    return "cudnn" if name == "cudnn" and jax.default_backend() == "gpu" else None


# Blocked attention on the CPU: batch rows per block, chosen so a block's logits stay near this size.
CPU_ATTENTION_BLOCK_BYTES = 2 << 20


def attention(q: Array, k: Array, v: Array, mask: Array | None, *, causal: bool, implementation: str | None) -> Array:
    """softmax(q k^T / sqrt(d)) v over [batch, length, heads, head_dim] inputs.

    ``jax.nn.dot_product_attention`` (cuDNN's fused kernel where ``implementation`` asks for it),
    except on the CPU when the logits of the whole batch are larger than a core's cache holds
    (over four blocks of ``CPU_ATTENTION_BLOCK_BYTES``): then ``lax.map`` runs the batch in
    blocks of at least two rows whose logits stay in cache, which XLA's CPU backend runs faster
    than one pass over all rows (measured on the MiniLM encoder: ``docs/benchmarks.md``). The same
    function either way, to float rounding.
    """
    batch, q_len, heads, _ = q.shape
    row_bytes = heads * q_len * k.shape[1] * 4
    block = max(2, CPU_ATTENTION_BLOCK_BYTES // row_bytes)
    if (jax.default_backend() != "cpu" or implementation is not None or batch * row_bytes <= 4 * CPU_ATTENTION_BLOCK_BYTES
            or batch % block):
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation=implementation)
    allowed = jnp.ones((1, 1, 1, k.shape[1]), bool) if mask is None else mask
    if causal:
        allowed = allowed & jnp.tril(jnp.ones((q_len, k.shape[1]), bool))
    allowed = jnp.broadcast_to(allowed, (batch, *allowed.shape[1:]))
    blocks = lambda x: x.reshape(batch // block, block, *x.shape[1:])  # noqa: E731
    out = jax.lax.map(lambda args: _softmax_attention(*args), tuple(map(blocks, (q, k, v, allowed))))
    return out.reshape(q.shape)


def cached_attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """Attention of new queries [batch, length, heads, head_dim] over a decode cache's keys and
    values [batch, heads, slots, head_dim], read in the cache's layout: transposing the cache
    for ``jax.nn.dot_product_attention`` copied all of it at every token."""
    logits = jnp.einsum("bqhd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) / np.sqrt(q.shape[-1])
    weights = jax.nn.softmax(jnp.where(mask, logits, jnp.finfo(jnp.float32).min), axis=-1)
    return jnp.einsum("bhqk,bhkd->bqhd", weights.astype(v.dtype), v)


def _softmax_attention(q, k, v, allowed):
    """Attention of one block of rows, normalised after the product with the values (one pass
    less over the probabilities); logits and weights in fp32."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / np.sqrt(q.shape[-1])
    logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    weights = jnp.exp(logits - logits.max(-1, keepdims=True))
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return (out / weights.sum(-1).transpose(0, 2, 1)[..., None]).astype(v.dtype)


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def activation(name: str) -> Callable[[Array], Array]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


def normal(std: float, axes: Sequence[str]):
    """N(0, std^2) initialiser that tags the parameter with logical axis names."""
    return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), tuple(axes))


def zeros(axes: Sequence[str]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), tuple(axes))


def ones(axes: Sequence[str]):
    return nn.with_logical_partitioning(nn.initializers.ones_init(), tuple(axes))


def constrain(x: Array) -> Array:
    """Name the axes of a hidden-state activation for the sharding rules."""
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


TOKENIZER_HINT = "Check that the tokenizer matches the model (its vocabulary must fit the model's {upper})."


def check_ids(ids, upper: int, what: str, hint: str = TOKENIZER_HINT) -> None:
    """Raise on ids outside [0, upper) when the ids are concrete (outside ``jit``).

    JAX clamps out-of-range gathers silently; under ``jit`` the embeddings turn such ids into
    NaN instead (see :class:`Embed`), so the loss becomes non-finite rather than wrong.
    """
    if isinstance(ids, jax.core.Tracer):
        return
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= upper):
        bad = ids[(ids < 0) | (ids >= upper)]
        raise ValueError(
            f"{what} out of range: got {sorted(set(bad.tolist()))[:8]}, but the model accepts 0..{upper - 1}. "
            + hint.format(upper=upper)
        )


def check_length(length: int, n_positions: int) -> None:
    """Refuse sequences longer than the learned position table (a gather would clamp them)."""
    if length > n_positions:
        raise ValueError(
            f"sequence length {length} exceeds the context of {n_positions} positions; truncate or split the input"
        )


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: Array, scale: Array, bias: Array, epsilon: float) -> Array:
    """(x - mean) / sqrt(var + eps) * scale + bias over the last axis, with the two-pass variance.

    The backward pass is written out (dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)) with
    g = dy * scale) rather than left to autodiff, which keeps several intermediates of the
    forward pass alive and spreads the gradient over more XLA fusions. Reverse mode only.
    """
    return _layer_norm_fwd(x, scale, bias, epsilon)[0]


def _layer_norm_fwd(x, scale, bias, epsilon):
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    rstd = jax.lax.rsqrt(jnp.square(centred).mean(-1, keepdims=True) + epsilon)
    x_hat = centred * rstd
    return x_hat * scale + bias, (x_hat, rstd, scale)


def _layer_norm_bwd(epsilon, residuals, dy):
    x_hat, rstd, scale = residuals
    g = dy * scale
    dx = rstd * (g - g.mean(-1, keepdims=True) - x_hat * (g * x_hat).mean(-1, keepdims=True))
    batch_axes = tuple(range(dy.ndim - 1))
    return dx, (dy * x_hat).sum(batch_axes), dy.sum(batch_axes)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
    """LayerNorm with the references' two-pass variance; statistics always in fp32."""

    epsilon: float
    axes: tuple[str, ...] = ("embed",)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = x.shape[-1]
        scale = self.param("scale", ones(self.axes), (features,), self.param_dtype)
        bias = self.param("bias", zeros(self.axes), (features,), self.param_dtype)
        f32 = partial(jnp.asarray, dtype=jnp.float32)
        return layer_norm(f32(x), f32(scale), f32(bias), self.epsilon).astype(self.dtype)


def is_quantized(table) -> bool:
    """A qwix ``QArray`` (int8 values and their scales, from ``models.quantize``), not an array."""
    return hasattr(table, "qvalue") and hasattr(table, "scale")


class Embed(nn.Module):
    """A lookup table whose out-of-range ids give NaN instead of a silently clamped row.

    The table may be int8 (``models.quantize``): a qwix ``QArray`` with one scale per row, which
    serves the lookup and, as the tied output layer, one scale per output channel.
    """

    num_embeddings: int
    features: int
    init_std: float
    axes: tuple[str, str] = ("vocab", "embed")
    what: str = "token ids"
    hint: str = TOKENIZER_HINT
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.embedding = self.param(
            "embedding", normal(self.init_std, self.axes), (self.num_embeddings, self.features), self.param_dtype
        )

    def __call__(self, ids: Array) -> Array:
        check_ids(ids, self.num_embeddings, self.what, self.hint)
        table = self.embedding
        if is_quantized(table):
            # qwix quantizes the weights of matrix products; a table is also a lookup, which it does
            # not cover (jnp.take of a QArray fails): gather the int8 rows and their scales here.
            rows = jnp.take(table.qvalue, ids, axis=0, mode="fill", fill_value=0).astype(self.dtype)
            return rows * jnp.take(table.scale, ids, axis=0, mode="fill", fill_value=jnp.nan).astype(self.dtype)
        return jnp.take(jnp.asarray(table, self.dtype), ids, axis=0, mode="fill", fill_value=jnp.nan)

    def attend(self, x: Array) -> Array:
        """Project hidden states onto the table: the tied output layer (see :func:`table_logits`)."""
        return table_logits(x, self.embedding, self.dtype)


def table_logits(x: Array, table, dtype: Dtype) -> Array:
    """Hidden states [..., d] projected onto the rows of a table [v, d] (an :class:`Embed` table,
    int8 ones included) computing in ``dtype``: logits [..., v], accumulated and returned in fp32."""
    if is_quantized(table):  # one scale per row, i.e. per output channel: applied to the product
        logits = jnp.einsum("...d,vd->...v", x, table.qvalue.astype(dtype), preferred_element_type=jnp.float32)
        return logits * table.scale[:, 0].astype(jnp.float32)
    return jnp.einsum("...d,vd->...v", x, jnp.asarray(table, dtype), preferred_element_type=jnp.float32)


class Dense(nn.Module):
    """A biased linear map from the last ``contract`` axes of the input to ``features``.

    The kernel keeps its multi-axis shape (``[embed, heads, kv]`` for a query projection) so each
    axis has a logical name. The input is flattened to [tokens, in...] first: XLA's CPU backend runs
    that product as one 2-D matrix multiply, faster than a dot_general with several batch axes
    (measured on GPT-2's MLP, forward and backward). The kernel goes into ``dot_general`` as it
    is, never reshaped, so qwix's post-training quantization (``models.quantize``) finds it.
    """

    features: tuple[int, ...]
    contract: int
    axes: tuple[str, ...]
    std: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    lora: tuple[int, float] = (0, 0.0)  # LoRA's (rank, alpha); rank 0: none (models.lora)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        batch, inner = x.shape[: x.ndim - self.contract], x.shape[x.ndim - self.contract:]
        kernel = self.param("kernel", normal(self.std, self.axes), (*inner, *self.features), self.param_dtype)
        bias = self.param("bias", zeros(self.axes[self.contract:]), self.features, self.param_dtype)
        x = jnp.asarray(x, self.dtype).reshape(-1, *inner)
        contracted = tuple(range(1, self.contract + 1)), tuple(range(self.contract))
        y = jax.lax.dot_general(x, jnp.asarray(kernel, self.dtype), (contracted, ((), ())))
        y = y + jnp.asarray(bias, self.dtype)
        rank, alpha = self.lora
        if rank:  # x A B * alpha / rank beside the frozen kernel: A [inputs, rank], B [rank, outputs]
            n_in, n_out = int(np.prod(inner)), int(np.prod(self.features))
            a = self.param("kernel_lora_a", nn.with_logical_partitioning(nn.initializers.he_uniform(),
                                                                         (self.axes[0], None)), (n_in, rank),
                           self.param_dtype)
            b = self.param("kernel_lora_b", zeros((None, self.axes[self.contract])), (rank, n_out), self.param_dtype)
            down = x.reshape(-1, n_in) @ jnp.asarray(a, self.dtype)
            y = y + ((down @ jnp.asarray(b, self.dtype)) * (alpha / rank)).reshape(y.shape)
        return y.reshape(*batch, *self.features)


def dense(features, *, axes, std, name, dtype, param_dtype, contract: int = 1, lora=(0, 0.0)) -> Dense:
    """A :class:`Dense` layer with N(0, std^2) weights and logical axis names ``axes`` (input axes
    first, then output axes), and LoRA adapters when ``lora``'s rank is positive."""
    features = tuple(features) if isinstance(features, (tuple, list)) else (features,)
    return Dense(features, contract, tuple(axes), std, dtype=dtype, param_dtype=param_dtype, lora=tuple(lora), name=name)


def padding_mask(attention_mask: Array | None) -> Array | None:
    """[batch, keys] with 1 for real tokens -> a boolean [batch, 1, 1, keys] attention mask."""
    if attention_mask is None:
        return None
    return jnp.asarray(attention_mask, bool)[:, None, None, :]


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate query/key/value projections.

    Without attention dropout it calls ``jax.nn.dot_product_attention`` so XLA (or cuDNN on a
    GPU) can pick a fused kernel; with dropout active the probabilities must be materialised,
    so it takes the explicit path, which computes the same function.
    """

    n_head: int
    head_dim: int
    d_model: int
    causal: bool
    dropout_rate: float
    init_std: float
    out_init_std: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    decode: bool = False  # keep keys and values in the ``cache`` collection (see cached_keys_values)
    implementation: str | None = None  # jax.nn.dot_product_attention's (attention_implementation)
    lora: tuple[int, float] = (0, 0.0)  # LoRA's (rank, alpha) on query, key, value and out (models.lora)

    @nn.compact
    def __call__(self, x: Array, mask: Array | None, deterministic: bool) -> Array:
        q, k, v = self.project(x)
        if self.decode:
            # The decoder's mask covers every cache slot and already says which ones each query may see.
            y = cached_attention(q, *self.cached_keys_values(k, v), mask)
        elif self.dropout_rate > 0 and not deterministic:
            y = self.explicit_attention(q, k, v, mask, self.make_rng("dropout"))
        else:
            y = attention(q, k, v, mask, causal=self.causal, implementation=self.implementation)
        return dense(
            self.d_model,
            contract=2,
            axes=("heads", "kv", "embed"),
            std=self.out_init_std,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            lora=self.lora,
            name="out",
        )(y)

    def project(self, x: Array) -> tuple[Array, Array, Array]:
        """The query, key and value projections [batch, length, heads, head_dim], as one matrix
        product with the three kernels side by side (one larger product runs faster on the CPU
        than three: the encoder and decoding; ``docs/benchmarks.md``). The parameters stay three
        :class:`Dense` layers' ``query``, ``key`` and ``value``; kernels that are not plain arrays
        (qwix's int8 ``QArray``s and their wrappers, which must reach ``dot_general`` as they are)
        take the three products."""
        heads = (self.n_head, self.head_dim)
        proj = dict(axes=("embed", "heads", "kv"), std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype)
        names = ("query", "key", "value")
        kernels = [self.get_variable("params", n, {}).get("kernel") for n in names]
        plain = all(isinstance(k, (jax.Array, np.ndarray)) for k in kernels)
        if self.lora[0] or self.is_initializing() or not plain:  # adapters: each layer's own product
            return tuple(dense(heads, name=n, lora=self.lora, **proj)(x) for n in names)
        kernel = jnp.stack([jnp.asarray(k, self.dtype) for k in kernels], 1)
        bias = jnp.stack([jnp.asarray(self.get_variable("params", n)["bias"], self.dtype) for n in names])
        batch = x.shape[:-1]
        y = jnp.asarray(x, self.dtype).reshape(-1, x.shape[-1]) @ kernel.reshape(x.shape[-1], -1)
        y = y.reshape(*batch, 3, *heads) + bias
        return y[..., 0, :, :], y[..., 1, :, :], y[..., 2, :, :]

    def cached_keys_values(self, k: Array, v: Array) -> tuple[Array, Array]:
        """Decode mode: append this call's keys and values to the cache; return every slot's,
        heads first ([batch, heads, slots, head_dim]).

        The cache holds ``cached_key`` and ``cached_value`` [batch, heads, slots, head_dim] (heads
        before slots: the layout :func:`cached_attention`'s products read, so XLA copies nothing
        at each step) and ``index`` [batch], the slots filled so far (the same in every row: rows
        are aligned, a shorter prompt is left-padded). ``init`` creates an empty cache as long as
        its input; each later call writes its tokens at ``index``. A call must fit in the slots
        left: ``dynamic_update_slice`` would move it back.
        """
        heads_first = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731  [b, t, h, d] -> [b, h, t, d]
        initialized = self.has_variable("cache", "cached_key")
        cached_k = self.variable("cache", "cached_key", jnp.zeros, heads_first(k).shape, k.dtype)
        cached_v = self.variable("cache", "cached_value", jnp.zeros, heads_first(v).shape, v.dtype)
        index = self.variable("cache", "index", jnp.zeros, k.shape[:1], jnp.int32)
        if not initialized:
            return heads_first(k), heads_first(v)
        start = (0, 0, index.value[0], 0)
        cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, heads_first(k).astype(cached_k.value.dtype), start)
        cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, heads_first(v).astype(cached_v.value.dtype), start)
        index.value = index.value + k.shape[1]
        return cached_k.value, cached_v.value

    def explicit_attention(self, q, k, v, mask, dropout_rng):
        """softmax(q k^T / sqrt(d)) v with dropout on the probabilities; logits and softmax in fp32."""
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        logits = logits / np.sqrt(self.head_dim)
        allowed = jnp.ones(logits.shape[-2:], bool) if mask is None else mask
        if self.causal:
            allowed = allowed & jnp.tril(jnp.ones(logits.shape[-2:], bool))
        logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1)
        keep = jax.random.bernoulli(dropout_rng, 1.0 - self.dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - self.dropout_rate), 0.0).astype(v.dtype)
        return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


class MLP(nn.Module):
    """Position-wise feed-forward: fc (d_model -> d_ff), activation, proj (d_ff -> d_model)."""

    d_model: int
    d_ff: int
    activation: str
    init_std: float
    out_init_std: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    lora: tuple[int, float] = (0, 0.0)  # LoRA's (rank, alpha) on fc and proj (models.lora)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, lora=self.lora)
        h = dense(self.d_ff, axes=("embed", "mlp"), std=self.init_std, name="fc", **kw)(x)
        h = nn.with_logical_constraint(activation(self.activation)(h), ("batch", "length", "mlp"))
        return dense(self.d_model, axes=("mlp", "embed"), std=self.out_init_std, name="proj", **kw)(h)


def lora_of(config, part: str) -> tuple[int, float]:
    """LoRA's (rank, alpha) for one part of a block ("attention" or "mlp"): the config's, where
    its ``lora_targets`` names the part ("all" names both), else rank 0."""
    return (config.lora_rank, config.lora_alpha) if config.lora_targets in (part, "all") else (0, 0.0)


class TransformerBlock(nn.Module):
    """One transformer layer: self-attention, then the MLP, each a residual branch with dropout.

    Post-LN (GPT, BERT, ALBERT): ``x = LN(x + f(x))``. Pre-LN (GPT-2): ``x = x + f(LN(x))``.
    Causal for the decoders; the encoders attend both ways, masking only padded keys. Every
    shape, rate and initialiser comes from the family's config (``models.config.TransformerConfig``).
    """

    config: Any  # a models.config.TransformerConfig
    decode: bool = False  # decoders only: attend over the ``cache`` collection (SelfAttention.cached_keys_values)
    n_head: int | None = None  # the heads this layer keeps when some are pruned (default config.n_head)

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        c = self.config
        kw = c.dtypes()
        attn = SelfAttention(
            n_head=self.n_head or c.n_head,
            head_dim=c.head_dim,
            d_model=c.d_model,
            causal=c.causal,
            dropout_rate=c.attn_dropout,
            init_std=c.initializer_range,
            out_init_std=c.residual_init_std,
            decode=self.decode,
            implementation=attention_implementation(c.attention),
            lora=lora_of(c, "attention"),
            name="attn",
            **kw,
        )
        mlp = MLP(c.d_model, c.d_ff, c.activation, c.initializer_range, c.residual_init_std, lora=lora_of(c, "mlp"),
                  name="mlp", **kw)
        ln_1 = LayerNorm(c.layer_norm_eps, name="ln_1", **kw)
        ln_2 = LayerNorm(c.layer_norm_eps, name="ln_2", **kw)
        drop = nn.Dropout(c.resid_dropout, deterministic=deterministic)
        if c.pre_ln:
            x = x + drop(attn(ln_1(x), mask, deterministic))
            x = x + drop(mlp(ln_2(x)))
        else:
            x = ln_1(x + drop(attn(x, mask, deterministic)))
            x = ln_2(x + drop(mlp(x)))
        return constrain(x), None


SEGMENT_HINT = "token_type_ids give each token's segment (sentence A = 0, B = 1); this model has {upper} types."


class EncoderEmbeddings(nn.Module):
    """BERT's input: word + position + segment (token type) embeddings, then LayerNorm and dropout.

    ``axis`` names the feature axis: ``embed`` for BERT, ``embed_factor`` for ALBERT, whose
    embeddings are narrower than its hidden states.
    """

    vocab_size: int
    n_positions: int
    n_segments: int
    width: int  # of the embeddings: d_model for BERT, ALBERT's narrower d_embed
    layer_norm_eps: float
    dropout_rate: float
    init_std: float
    axis: str = "embed"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.word_embeddings = Embed(self.vocab_size, self.width, self.init_std, axes=("vocab", self.axis), **kw)
        self.position_embeddings = Embed(
            self.n_positions, self.width, self.init_std, axes=("positions", self.axis),
            what="position ids", **kw,
        )
        self.token_type_embeddings = Embed(
            self.n_segments, self.width, self.init_std, axes=("segments", self.axis),
            what="segment ids (token_type_ids)", hint=SEGMENT_HINT, **kw,
        )
        self.ln = LayerNorm(self.layer_norm_eps, axes=(self.axis,), **kw)
        self.dropout = nn.Dropout(self.dropout_rate)

    def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool) -> Array:
        """Segment ids default to 0 (one sentence), positions to 0..length-1."""
        length = input_ids.shape[-1]
        check_length(length, self.n_positions)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if position_ids is None:
            position_ids = jnp.arange(length)[None, :]
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(position_ids)
        return self.dropout(self.ln(x), deterministic=deterministic)

    def attend(self, x: Array) -> Array:
        """Logits over the vocabulary from the word embeddings (the tied MLM decoder)."""
        return self.word_embeddings.attend(x)


class MLMHead(nn.Module):
    """The masked-LM head: dense, activation, LayerNorm, then the tied word embeddings plus an
    output-only bias. ``width`` is the width of the word embeddings (ALBERT: its E < H)."""

    width: int
    vocab_size: int
    activation: str
    layer_norm_eps: float
    init_std: float
    axis: str = "embed"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, decode: Callable[[Array], Array]) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = dense(self.width, axes=("embed", "mlp"), std=self.init_std, name="transform", **kw)(x)
        h = LayerNorm(self.layer_norm_eps, axes=(self.axis,), name="ln", **kw)(activation(self.activation)(h))
        bias = self.param("bias", zeros(("vocab",)), (self.vocab_size,), self.param_dtype)
        return decode(h) + jnp.asarray(bias, self.dtype)


def stack_layers(per_layer: list, scanned: bool, name: str) -> dict:
    """Per-layer parameter trees -> the layout of the model: one stacked tree under ``name``
    (leading ``layers`` axis) when scanned, else ``{name}_0``, ``{name}_1``, ..."""
    if scanned:
        return {name: jax.tree.map(lambda *xs: np.stack(xs), *per_layer)}
    return {f"{name}_{i}": tree for i, tree in enumerate(per_layer)}


def unstack_layers(params: dict, n: int, scanned: bool, name: str) -> list:
    """Inverse of :func:`stack_layers`."""
    if scanned:
        return [jax.tree.map(lambda x: x[i], params[name]) for i in range(n)]
    return [params[f"{name}_{i}"] for i in range(n)]


def repeat_layers(block: type[nn.Module], n: int, *, scanned: bool, remat: str, name: str, shared: bool = False):
    """Build ``n`` applications of ``block`` in a row: one ``nn.scan`` or ``n`` unrolled calls.

    Each application has its own parameters (stacked on a leading ``layers`` axis when scanned,
    ``{name}_0``, ``{name}_1``, ... when unrolled), unless ``shared``: then one set of parameters
    serves every application (ALBERT), broadcast to every step of the scan or held by one module
    instance called ``n`` times, so it appears once in the parameter tree either way.
    ``block.__call__(x, mask, deterministic)`` must return ``(x, None)``.
    Returns a function ``(module_kwargs) -> (x, mask, deterministic) -> x``; its ``per_layer``
    argument, one dict per layer, changes the kwargs of single layers (pruned attention heads),
    and must be the same for every layer when scanned or shared."""
    if remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat!r}; choose one of {sorted(REMAT_POLICIES)}")
    if remat != "none":
        # argnum 3 is `deterministic` (self is 0): a Python bool that must stay static.
        block = nn.remat(block, policy=REMAT_POLICIES[remat], prevent_cse=not scanned, static_argnums=(3,))

    def build(per_layer: Sequence[dict] = (), **kwargs):
        per_layer = list(per_layer) or [{}] * n
        if len(per_layer) != n:
            raise ValueError(f"per_layer has {len(per_layer)} entries for {n} layers")
        if (scanned or shared) and any(p != per_layer[0] for p in per_layer):
            raise ValueError("scanned or shared layers have one shape: per_layer must be the same for every layer")
        if scanned or shared:
            kwargs = {**kwargs, **per_layer[0]}
        if scanned:
            if shared:
                variables = dict(variable_broadcast="params", split_rngs={"params": False, "dropout": True})
            else:
                # Cache entries keep the batch first ([batch, layers, ...]) so rows can be repeated or picked alike.
                variables = dict(
                    variable_axes={"params": 0, "cache": 1},
                    split_rngs={"params": True, "dropout": True},
                    metadata_params={nn.PARTITION_NAME: "layers"},
                )
            stack = nn.scan(block, in_axes=(nn.broadcast, nn.broadcast), length=n, **variables)(name=name, **kwargs)
            return lambda x, mask, deterministic: stack(x, mask, deterministic)[0]
        blocks = ([block(name=name, **kwargs)] * n if shared
                  else [block(name=f"{name}_{i}", **{**kwargs, **per_layer[i]}) for i in range(n)])

        def run(x, mask, deterministic):
            for b in blocks:
                x, _ = b(x, mask, deterministic)
            return x

        return run

    return build


def depth_tree(params: dict, fixed: dict[str, int], layers: str, n: int, first: int = 1) -> dict:
    """The depth of every parameter, from its top-level name (see ``models.param_depths``).

    ``fixed`` gives the depth of named parts (embeddings, final norm, heads); the ``n`` repeated
    layers, ``{layers}_0``, ``{layers}_1``, ... (unrolled), get depths ``first``, ``first + 1``,
    ...; a stacked ``{layers}`` tree (one array per weight, a leading axis of ``n`` layers) gets
    ``[first, ..., first + n - 1]``, one depth per slice. Depths are numpy int32 arrays.
    """
    out = {}
    for key, tree in params.items():
        index = key[len(layers) + 1:] if key.startswith(f"{layers}_") else None
        if key in fixed:
            depth = np.int32(fixed[key])
        elif index is not None and index.isdigit() and int(index) < n:
            depth = np.int32(first + int(index))
        elif key == layers:
            depth = np.arange(first, first + n, dtype=np.int32)
        else:
            raise ValueError(f"no depth for the parameters under {key!r}; expected {sorted(fixed)} or {layers}_0..{n - 1}")
        out[key] = jax.tree.map(lambda _, d=depth: d, tree)
    return out
