"""BERT (Devlin et al., 2019): a bidirectional transformer encoder, pretrained with a masked-LM
and a next-sentence-prediction (NSP) head.

- Input: word + position + segment (token type) embeddings, LayerNorm, dropout.
- Post-LN layers, ``x = LN(x + Attn(x)); x = LN(x + MLP(x))``, every token attending to every
  unpadded token (``attention_mask``); the exact erf GELU; LayerNorm epsilon 1e-12.
- Pooler: dense + tanh on the first ([CLS]) token's state; the NSP head classifies it 2-way.
- MLM head: dense, activation, LayerNorm, then the word embeddings (tied) plus an output bias.

Released checkpoints come with different heads (transformers' ``BertForPreTraining``,
``BertForMaskedLM``, ``BertModel``), so ``head`` says which exist. The module returns a dict:
``hidden`` [batch, length, hidden_size] always, ``pooled`` [batch, hidden_size],
``mlm_logits`` [batch, length, vocab] and ``nsp_logits`` [batch, 2] when present.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from models.heads_pruning import normalize_pruned_heads, per_layer_kwargs
from models.layers import (
    EncoderEmbeddings,
    MLMHead,
    TransformerBlock,
    constrain,
    dense,
    depth_tree,
    padding_mask,
    repeat_layers,
    validate_config,
)
from models.registry import register

# What sits on the encoder for each ``head`` value, named as in transformers.
HEADS = {
    "pretraining": ("pooler", "mlm", "sentence"),  # ...ForPreTraining: MLM + NSP (BERT) or SOP (ALBERT)
    "mlm": ("mlm",),  # ...ForMaskedLM: no pooler
    "pooler": ("pooler",),  # ...Model
    "none": (),  # ...Model without its pooling layer
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Field names are those of the reference configs (Google's bert_config.json)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"  # the exact erf GELU; one of models.layers.ACTIVATIONS
    hidden_dropout_prob: float = 0.1  # embeddings and both residual branches
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2  # segments: sentence A and B
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    head: str = "pretraining"  # one of HEADS
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    scan_layers: bool = False  # True: one nn.scan over the layers (one compiled layer)
    remat: str = "none"  # one of models.layers.REMAT_POLICIES
    # Attention heads removed, per layer (original indices; models.heads_pruning); () for none.
    pruned_heads: tuple[tuple[int, ...], ...] = ()

    family = "bert"
    sentence_task = "nsp"  # the sentence-pair head of the pretraining objective

    def __post_init__(self):
        validate_config(self, width="hidden_size", heads="num_attention_heads", activation="hidden_act",
                        dropouts=("hidden_dropout_prob", "attention_probs_dropout_prob"))
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose one of {list(HEADS)}")
        object.__setattr__(self, "pruned_heads", normalize_pruned_heads(
            self.pruned_heads, self.num_hidden_layers, self.num_attention_heads, self.scan_layers))

    @property
    def heads(self) -> tuple[str, ...]:
        """The parts on the encoder: ``pooler``, ``mlm``, and ``nsp`` (BERT) or ``sop`` (ALBERT)."""
        return tuple(self.sentence_task if part == "sentence" else part for part in HEADS[self.head])

    def block_kwargs(self) -> dict:
        return dict(
            num_heads=self.num_attention_heads, features=self.hidden_size, d_ff=self.intermediate_size,
            activation=self.hidden_act, layer_norm_eps=self.layer_norm_eps, causal=False, pre_ln=False,
            attn_dropout=self.attention_probs_dropout_prob, resid_dropout=self.hidden_dropout_prob,
            init_std=self.initializer_range, out_init_std=self.initializer_range, **self.dtypes(),
            head_dim=self.hidden_size // self.num_attention_heads,
        )

    def dtypes(self) -> dict:
        return dict(dtype=jnp.dtype(self.dtype), param_dtype=jnp.dtype(self.param_dtype))

    def module(self, **kwargs) -> "BERT":
        return BERT(self, **kwargs)

    @property
    def head_depth(self) -> int:
        """Depth of the heads (pooler, MLM, NSP/SOP, a classifier head); see ``param_depths``."""
        return self.num_hidden_layers + 1

    def param_depths(self, params) -> dict:
        """0: the embeddings; 1..num_hidden_layers: the layers; then the heads."""
        heads = dict.fromkeys(("pooler", "mlm", self.sentence_task), self.head_depth)
        return depth_tree(params, {"embeddings": 0, **heads}, "blocks", self.num_hidden_layers)


class BERT(nn.Module):
    """The encoder and the heads its config names; ALBERT subclasses it (see ``models.albert``)."""

    config: BertConfig

    embedding_axis = "embed"  # logical name of the embeddings' feature axis

    @property
    def embedding_size(self) -> int:
        return self.config.hidden_size

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        deterministic: bool = True,
    ) -> dict:
        """input_ids [batch, length]; attention_mask [batch, length], 1 for real tokens, 0 for
        padding; token_type_ids (segments) default to 0; position_ids to 0..length-1."""
        c = self.config
        kw = c.dtypes()
        embeddings = EncoderEmbeddings(
            c.vocab_size, c.max_position_embeddings, c.type_vocab_size, self.embedding_size, c.layer_norm_eps,
            c.hidden_dropout_prob, c.initializer_range, axis=self.embedding_axis, name="embeddings", **kw,
        )
        x = embeddings(input_ids, token_type_ids, position_ids, deterministic)
        x = self.encode(x, padding_mask(attention_mask), deterministic)
        out = {"hidden": x}
        if "pooler" in c.heads:
            pooler = dense(c.hidden_size, axes=("embed", "mlp"), std=c.initializer_range, name="pooler", **kw)
            out["pooled"] = jnp.tanh(pooler(x[:, 0]))
        if "mlm" in c.heads:
            mlm = MLMHead(
                self.embedding_size, c.vocab_size, c.hidden_act, c.layer_norm_eps, c.initializer_range,
                axis=self.embedding_axis, name="mlm", **kw,
            )
            out["mlm_logits"] = mlm(x, embeddings.attend)
        if c.sentence_task in c.heads:
            classify = dense(2, axes=("embed", "classes"), std=c.initializer_range, name=c.sentence_task, **kw)
            out[f"{c.sentence_task}_logits"] = classify(out["pooled"])
        return out

    def encode(self, x, mask, deterministic: bool):
        """Embeddings -> final hidden states: ``num_hidden_layers`` layers, each its own parameters."""
        c = self.config
        layers = repeat_layers(TransformerBlock, c.num_hidden_layers, scanned=c.scan_layers, remat=c.remat, name="blocks")
        return layers(**c.block_kwargs(), per_layer=per_layer_kwargs(c))(constrain(x), mask, deterministic)


_BASE = BertConfig()
register("bert-base-uncased", _BASE)
register("bert-base-cased", dataclasses.replace(_BASE, vocab_size=28996))
register("bert-large-uncased", dataclasses.replace(
    _BASE, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
))
# The small uncased BERTs of Turc et al. (2019), "Well-Read Students Learn Better": 64-wide heads, 4H MLP.
register("bert-tiny", dataclasses.replace(
    _BASE, num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512))
register("bert-mini", dataclasses.replace(
    _BASE, num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024))
register("bert-small", dataclasses.replace(
    _BASE, num_hidden_layers=4, hidden_size=512, num_attention_heads=8, intermediate_size=2048))
register("bert-medium", dataclasses.replace(
    _BASE, num_hidden_layers=8, hidden_size=512, num_attention_heads=8, intermediate_size=2048))
# MiniLM-L6-H384 (Wang et al. 2020), the body of sentence-transformers' all-MiniLM-L6-v2.
register("minilm-l6-h384-uncased", dataclasses.replace(
    _BASE, num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536))
