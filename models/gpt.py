"""GPT (Radford et al., 2018) and GPT-2 (Radford et al., 2019): one decoder-only transformer.

The two generations differ in where LayerNorm sits and how residual branches are initialised:

- GPT: post-LN, ``x = LN(x + Attn(x)); x = LN(x + MLP(x))``, no final LayerNorm.
- GPT-2: pre-LN, ``x = x + Attn(LN(x)); x = x + MLP(LN(x))``, one more LayerNorm after the last
  block, and the output projections of both residual branches drawn with std
  ``0.02 / sqrt(2 * n_layer)`` (two residual layers per block).

``pre_ln``, ``final_ln`` and ``scale_residual_init`` switch the three changes on and off one by
one, for ablations. Both use learned positions, tied input/output embeddings, dropout on embeddings, attention
probabilities and residual branches, the tanh GELU and LayerNorm epsilon 1e-5.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.adaptive_softmax import adaptive_softmax, check_cutoffs
from models.config import TransformerConfig
from models.heads_pruning import normalize_pruned_heads, per_layer_kwargs
from models.layers import (
    Embed,
    LayerNorm,
    TransformerBlock,
    check_length,
    constrain,
    depth_tree,
    is_quantized,
    padding_mask,
    repeat_layers,
)
from models.registry import register


@dataclasses.dataclass(frozen=True)
class GPTConfig(TransformerConfig):
    """The shared shape fields (``models.config``; defaults of GPT-2 small) plus GPT-2's three
    changes and the adaptive softmax."""

    pre_ln: bool = True  # GPT-2's LayerNorm at each sub-block's input; False: GPT's post-LN blocks
    final_ln: bool = True  # GPT-2's LayerNorm after the last block (GPT has none)
    scale_residual_init: bool = True  # GPT-2's 1/sqrt(2 * n_layer) on residual output projections
    # Adaptive softmax output layer (models.adaptive_softmax) for frequency-sorted ids: the
    # shortlist size and the starts of the tail clusters; () for the full, tied softmax.
    adaptive_cutoffs: tuple[int, ...] = ()
    adaptive_div: float = 4.0  # tail cluster i projects to d_model / adaptive_div**(i+1)
    # The language-model loss computes the tied output layer this many positions at a time (each
    # chunk's logits recomputed in the backward pass), so it never holds [batch, length, vocab]
    # fp32 logits at once; 0: all positions at once. The same loss either way.
    logits_chunk: int = 0

    family = "gpt"
    causal = True

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "pruned_heads", normalize_pruned_heads(
            self.pruned_heads, self.n_layer, self.n_head, self.scan_layers))
        object.__setattr__(self, "adaptive_cutoffs", check_cutoffs(self.adaptive_cutoffs, self.vocab_size))
        if self.adaptive_div < 1:
            raise ValueError(f"adaptive_div={self.adaptive_div} must be at least 1 (4 in Grave et al.)")
        if self.logits_chunk < 0 or (self.logits_chunk and self.adaptive_cutoffs):
            raise ValueError(f"logits_chunk={self.logits_chunk}: give positions per chunk (0: all at once); the adaptive "
                             "softmax never holds the full logits and takes none")

    @property
    def residual_init_std(self) -> float:
        if self.scale_residual_init:
            return self.initializer_range / math.sqrt(2 * self.n_layer)
        return self.initializer_range

    def module(self, **kwargs) -> "GPT":
        return GPT(self, **kwargs)

    @property
    def head_depth(self) -> int:
        """Depth of anything put on top of the blocks (a classifier head); see ``param_depths``."""
        return self.n_layer + 1

    def param_depths(self, params) -> dict:
        """0: the token and position embeddings (``wte`` is also the tied output layer); 1..n_layer:
        the blocks, with ``ln_f`` in the last one (it normalises that block's output)."""
        return depth_tree(params, {"wte": 0, "wpe": 0, "ln_f": self.n_layer}, "blocks", self.n_layer)


class GPT(nn.Module):
    """Decoder-only language model; returns next-token logits (or the final hidden states).

    With ``decode=True`` it reads and extends a ``cache`` collection (flax's lm1b pattern), so
    generation feeds only the new tokens: ``module.init(rng, ids, decode=True)["cache"]`` gives an
    empty cache with as many slots as ``ids`` has columns (``models.generation.init_cache``), and
    each ``apply(..., decode=True, mutable=["cache"])`` appends its tokens. Besides each layer's keys
    and values the cache holds ``mask`` [batch, slots], which slots hold real tokens, and ``index``
    [batch], how many slots are filled; padding (0 in ``attention_mask``) takes a slot but is never
    attended to, and the position of a token is the number of real tokens before it in its row.
    ``adaptive_cutoffs`` makes it return log-probabilities from an adaptive softmax instead of logits.
    """

    config: GPTConfig

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        deterministic: bool = True,
        return_hidden: bool = False,
        decode: bool = False,
        last_only: bool = False,
        output_table=None,
    ):
        """input_ids [batch, length]; attention_mask [batch, length], 1 for real tokens, 0 for
        padding; position_ids default to 0..length-1 (in decode mode, to the count of real tokens
        before each one). ``last_only``: the last position's logits alone ([batch, 1, vocab]), all
        that a prompt's prefill needs. ``output_table``: the tied output layer as a [d_model, vocab]
        array (the embedding table transposed once, :func:`output_table`), which a decoding loop
        reads every token: faster than projecting onto the [vocab, d_model] table."""
        c = self.config
        kw = c.dtypes()
        length = input_ids.shape[-1]
        check_length(length, c.n_positions)
        if decode:
            mask, position_ids = self.cache_mask(attention_mask, position_ids, input_ids.shape)
        else:
            mask = padding_mask(attention_mask)
        if position_ids is None:
            position_ids = jnp.arange(length)[None, :]
        wte = Embed(c.vocab_size, c.d_model, c.initializer_range, name="wte", **kw)
        wpe = Embed(
            c.n_positions, c.d_model, c.initializer_range, axes=("positions", "embed"), what="position ids",
            name="wpe", **kw,
        )
        x = wte(input_ids) + wpe(position_ids)
        x = constrain(nn.Dropout(c.embed_dropout, deterministic=deterministic)(x))
        # Decoding computes no gradients: nothing to rematerialise (the parameters are the same either way).
        blocks = repeat_layers(TransformerBlock, c.n_layer, scanned=c.scan_layers, remat="none" if decode else c.remat,
                               name="blocks")(config=c, per_layer=per_layer_kwargs(c), decode=decode)
        x = blocks(x, mask, deterministic)
        if last_only:
            x = x[:, -1:]
        if c.final_ln:
            x = LayerNorm(c.layer_norm_eps, name="ln_f", **kw)(x)
        if return_hidden:
            return x
        if c.adaptive_cutoffs:  # exact log-probabilities, which sampling treats as logits
            return adaptive_softmax(c)(x, wte.embedding)
        if output_table is not None:
            return jnp.einsum("...d,dv->...v", x, output_table, preferred_element_type=jnp.float32)
        return wte.attend(x)

    def cache_mask(self, attention_mask, position_ids, shape):
        """Decode mode: record which new slots hold real tokens; return the attention mask over all
        slots ([batch, 1, length, slots]: real, and not after the query) and the positions."""
        batch, length = shape
        real = jnp.ones(shape, bool) if attention_mask is None else jnp.asarray(attention_mask, bool)
        initialized = self.has_variable("cache", "mask")
        slots = self.variable("cache", "mask", jnp.zeros, shape, bool)
        index = self.variable("cache", "index", jnp.zeros, (batch,), jnp.int32)
        start, seen = 0, 0
        if initialized:  # init only creates the (empty) cache
            start, seen = index.value[0], slots.value.sum(-1, keepdims=True)
            slots.value = jax.lax.dynamic_update_slice(slots.value, real, (0, start))
            index.value = index.value + length
        if position_ids is None:  # padding before a row's first token gets position 0, and is never attended to
            position_ids = jnp.maximum(seen + jnp.cumsum(real, axis=1) - 1, 0)
        visible = slots.value if initialized else real
        causal = jnp.arange(visible.shape[1])[None, :] <= start + jnp.arange(length)[:, None]
        return visible[:, None, None, :] & causal[None, None], position_ids


def output_table(config: GPTConfig, params):
    """The tied output layer laid out for decoding, [d_model, vocab] in the compute dtype, or None
    where the table is not a plain array (int8) or the output is the adaptive softmax."""
    table = params["wte"]["embedding"]
    if config.adaptive_cutoffs or is_quantized(table):
        return None
    return jnp.asarray(table, jnp.dtype(config.dtype)).T


_GPT2 = GPTConfig()
register("openai-gpt", dataclasses.replace(
    _GPT2, vocab_size=40478, n_positions=512, pre_ln=False, final_ln=False, scale_residual_init=False,
))
register("gpt2", _GPT2)
register("gpt2-medium", dataclasses.replace(_GPT2, d_model=1024, n_layer=24, n_head=16, d_ff=4096))
register("gpt2-large", dataclasses.replace(_GPT2, d_model=1280, n_layer=36, n_head=20, d_ff=5120))
register("gpt2-xl", dataclasses.replace(_GPT2, d_model=1600, n_layer=48, n_head=25, d_ff=6400))
# Tiny shapes for tests and quick CPU runs.
register("gpt2-tiny", dataclasses.replace(_GPT2, vocab_size=256, n_positions=64, d_model=32, n_layer=2, n_head=4, d_ff=128))
register("openai-gpt-tiny", dataclasses.replace(
    _GPT2, vocab_size=256, n_positions=64, d_model=32, n_layer=2, n_head=4, d_ff=128, pre_ln=False, final_ln=False,
    scale_residual_init=False,
))
# A small GPT-2 that trains to a useful perplexity in minutes on a laptop CPU (the main job).
register("gpt2-mini", dataclasses.replace(_GPT2, vocab_size=8192, n_positions=256, d_model=256, n_layer=4, n_head=4, d_ff=1024))
