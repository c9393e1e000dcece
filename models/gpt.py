"""GPT (Radford et al., 2018) and GPT-2 (Radford et al., 2019): one decoder-only transformer.

The two generations differ in where LayerNorm sits and how residual branches are initialised:

- GPT: post-LN, ``x = LN(x + Attn(x)); x = LN(x + MLP(x))``, no final LayerNorm.
- GPT-2: pre-LN, ``x = x + Attn(LN(x)); x = x + MLP(LN(x))``, one more LayerNorm after the last
  block, and the output projections of both residual branches drawn with std
  ``0.02 / sqrt(2 * n_layer)`` (two residual layers per block).

Both use learned positions, tied input/output embeddings, dropout on embeddings, attention
probabilities and residual branches, the tanh GELU and LayerNorm epsilon 1e-5.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax.numpy as jnp

from models.adaptive_softmax import adaptive_softmax, check_cutoffs
from models.heads_pruning import normalize_pruned_heads, per_layer_kwargs
from models.layers import (
    Embed,
    LayerNorm,
    TransformerBlock,
    check_length,
    constrain,
    padding_mask,
    repeat_layers,
    validate_config,
)
from models.registry import register


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50257
    n_positions: int = 1024  # context length
    d_model: int = 768
    n_layer: int = 12
    n_head: int = 12
    d_ff: int = 3072
    pre_ln: bool = True  # GPT-2; False gives GPT's post-LN blocks and no final LayerNorm
    activation: str = "gelu_tanh"
    layer_norm_eps: float = 1e-5
    embd_dropout: float = 0.1
    attn_dropout: float = 0.1
    resid_dropout: float = 0.1
    initializer_range: float = 0.02
    scale_residual_init: bool = True  # GPT-2's 1/sqrt(2 * n_layer) on residual output projections
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    scan_layers: bool = False  # True: one nn.scan over the layers (one compiled layer)
    remat: str = "none"  # one of models.layers.REMAT_POLICIES
    # Attention heads removed, per layer (original indices; models.heads_pruning); () for none.
    pruned_heads: tuple[tuple[int, ...], ...] = ()
    # Adaptive softmax output layer (models.adaptive_softmax) for frequency-sorted ids: the
    # shortlist size and the starts of the tail clusters; () for the full, tied softmax.
    adaptive_cutoffs: tuple[int, ...] = ()
    adaptive_div: float = 4.0  # tail cluster i projects to d_model / adaptive_div**(i+1)

    family = "gpt"

    def __post_init__(self):
        validate_config(self, width="d_model", heads="n_head", activation="activation",
                        dropouts=("embd_dropout", "attn_dropout", "resid_dropout"))
        object.__setattr__(self, "pruned_heads", normalize_pruned_heads(
            self.pruned_heads, self.n_layer, self.n_head, self.scan_layers))
        object.__setattr__(self, "adaptive_cutoffs", check_cutoffs(self.adaptive_cutoffs, self.vocab_size))
        if self.adaptive_div < 1:
            raise ValueError(f"adaptive_div={self.adaptive_div} must be at least 1 (4 in Grave et al.)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def residual_init_std(self) -> float:
        if self.scale_residual_init:
            return self.initializer_range / math.sqrt(2 * self.n_layer)
        return self.initializer_range

    def module(self) -> "GPT":
        return GPT(self)

    def block_kwargs(self) -> dict:
        return dict(
            num_heads=self.n_head, features=self.d_model, d_ff=self.d_ff, activation=self.activation,
            layer_norm_eps=self.layer_norm_eps, causal=True, pre_ln=self.pre_ln, attn_dropout=self.attn_dropout,
            resid_dropout=self.resid_dropout, init_std=self.initializer_range, out_init_std=self.residual_init_std,
            dtype=jnp.dtype(self.dtype), param_dtype=jnp.dtype(self.param_dtype), head_dim=self.head_dim,
        )


class GPT(nn.Module):
    """Decoder-only language model; returns next-token logits (or the final hidden states); with
    ``adaptive_cutoffs``, log-probabilities from an adaptive softmax."""

    config: GPTConfig

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        deterministic: bool = True,
        return_hidden: bool = False,
    ):
        """input_ids [batch, length]; attention_mask [batch, length], 1 for real tokens, 0 for
        padding; position_ids default to 0..length-1."""
        c = self.config
        kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
        length = input_ids.shape[-1]
        check_length(length, c.n_positions)
        if position_ids is None:
            position_ids = jnp.arange(length)[None, :]
        wte = Embed(c.vocab_size, c.d_model, c.initializer_range, name="wte", **kw)
        wpe = Embed(
            c.n_positions, c.d_model, c.initializer_range, axes=("positions", "embed"), what="position ids",
            name="wpe", **kw,
        )
        x = wte(input_ids) + wpe(position_ids)
        x = constrain(nn.Dropout(c.embd_dropout, deterministic=deterministic)(x))
        blocks = repeat_layers(TransformerBlock, c.n_layer, scanned=c.scan_layers, remat=c.remat, name="blocks")(
            **c.block_kwargs(), per_layer=per_layer_kwargs(c)
        )
        x = blocks(x, padding_mask(attention_mask), deterministic)
        if c.pre_ln:
            x = LayerNorm(c.layer_norm_eps, name="ln_f", **kw)(x)
        if return_hidden:
            return x
        if c.adaptive_cutoffs:  # exact log-probabilities, which sampling treats as logits
            return adaptive_softmax(c)(x, wte.embedding)
        return wte.attend(x)


_GPT2 = GPTConfig()
register("openai-gpt", dataclasses.replace(
    _GPT2, vocab_size=40478, n_positions=512, pre_ln=False, scale_residual_init=False,
))
register("gpt2", _GPT2)
register("gpt2-medium", dataclasses.replace(_GPT2, d_model=1024, n_layer=24, n_head=16, d_ff=4096))
register("gpt2-large", dataclasses.replace(_GPT2, d_model=1280, n_layer=36, n_head=20, d_ff=5120))
register("gpt2-xl", dataclasses.replace(_GPT2, d_model=1600, n_layer=48, n_head=25, d_ff=6400))
# Tiny shapes for tests and quick CPU runs.
register("gpt2-tiny", dataclasses.replace(_GPT2, vocab_size=256, n_positions=64, d_model=32, n_layer=2, n_head=4, d_ff=128))
register("openai-gpt-tiny", dataclasses.replace(
    _GPT2, vocab_size=256, n_positions=64, d_model=32, n_layer=2, n_head=4, d_ff=128, pre_ln=False,
    scale_residual_init=False,
))
# A small GPT-2 that trains to a useful perplexity in minutes on a laptop CPU (the main job).
register("gpt2-mini", dataclasses.replace(_GPT2, vocab_size=8192, n_positions=256, d_model=256, n_layer=4, n_head=4, d_ff=1024))
