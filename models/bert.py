"""BERT (Devlin et al., 2019): a bidirectional transformer encoder, pretrained with a masked-LM
and a next-sentence-prediction (NSP) head.

- Input: word + position + segment (token type) embeddings, LayerNorm, dropout.
- Post-LN layers, ``x = LN(x + Attn(x)); x = LN(x + MLP(x))``, every token attending to every
  unpadded token (``attention_mask``); the exact erf GELU; LayerNorm epsilon 1e-12.
- Pooler: dense + tanh on the first ([CLS]) token's state; the NSP head classifies it 2-way.
- MLM head: dense, activation, LayerNorm, then the word embeddings (tied) plus an output bias.

Released checkpoints come with different heads (transformers' ``BertForPreTraining``,
``BertForMaskedLM``, ``BertModel``), so ``head`` says which exist. The module returns a dict:
``hidden`` [batch, length, d_model] always, ``pooled`` [batch, d_model],
``mlm_logits`` [batch, length, vocab] and ``nsp_logits`` [batch, 2] when present.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from models.config import TransformerConfig
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
class BertConfig(TransformerConfig):
    """The shared shape fields (``models.config``) with bert-base's defaults, plus segments and heads."""

    vocab_size: int = 30522
    n_positions: int = 512
    activation: str = "gelu"  # the exact erf GELU
    layer_norm_eps: float = 1e-12
    n_segments: int = 2  # segment (token type) embeddings: sentence A and B
    head: str = "pretraining"  # one of HEADS

    family = "bert"
    sentence_task = "nsp"  # the sentence-pair head of the pretraining objective

    def __post_init__(self):
        super().__post_init__()
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose one of {list(HEADS)}")
        if self.n_segments < 1:
            raise ValueError(f"n_segments={self.n_segments} must be at least 1")
        object.__setattr__(self, "pruned_heads", normalize_pruned_heads(
            self.pruned_heads, self.n_layer, self.n_head, self.scan_layers))

    @property
    def heads(self) -> tuple[str, ...]:
        """The parts on the encoder: ``pooler``, ``mlm``, and ``nsp`` (BERT) or ``sop`` (ALBERT)."""
        return tuple(self.sentence_task if part == "sentence" else part for part in HEADS[self.head])

    @property
    def d_embed(self) -> int:
        """Width of the embeddings (ALBERT factorises them narrower than d_model)."""
        return self.d_model

    def module(self, **kwargs) -> "BERT":
        return BERT(self, **kwargs)

    @property
    def head_depth(self) -> int:
        """Depth of the heads (pooler, MLM, NSP/SOP, a classifier head); see ``param_depths``."""
        return self.n_layer + 1

    def param_depths(self, params) -> dict:
        """0: the embeddings; 1..n_layer: the layers; then the heads."""
        heads = dict.fromkeys(("pooler", "mlm", self.sentence_task), self.head_depth)
        return depth_tree(params, {"embeddings": 0, **heads}, "blocks", self.n_layer)


class BERT(nn.Module):
    """The encoder and the heads its config names; ALBERT subclasses it (see ``models.albert``)."""

    config: BertConfig

    embedding_axis = "embed"  # logical name of the embeddings' feature axis

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
            c.vocab_size, c.n_positions, c.n_segments, c.d_embed, c.layer_norm_eps,
            c.embed_dropout, c.initializer_range, axis=self.embedding_axis, name="embeddings", **kw,
        )
        x = embeddings(input_ids, token_type_ids, position_ids, deterministic)
        x = self.encode(x, padding_mask(attention_mask), deterministic)
        out = {"hidden": x}
        if "pooler" in c.heads:
            pooler = dense(c.d_model, axes=("embed", "mlp"), std=c.initializer_range, name="pooler", **kw)
            out["pooled"] = jnp.tanh(pooler(x[:, 0]))
        if "mlm" in c.heads:
            mlm = MLMHead(
                c.d_embed, c.vocab_size, c.activation, c.layer_norm_eps, c.initializer_range,
                axis=self.embedding_axis, name="mlm", **kw,
            )
            out["mlm_logits"] = mlm(x, embeddings.attend)
        if c.sentence_task in c.heads:
            classify = dense(2, axes=("embed", "classes"), std=c.initializer_range, name=c.sentence_task, **kw)
            out[f"{c.sentence_task}_logits"] = classify(out["pooled"])
        return out

    def encode(self, x, mask, deterministic: bool):
        """Embeddings -> final hidden states: ``n_layer`` layers, each its own parameters."""
        c = self.config
        layers = repeat_layers(TransformerBlock, c.n_layer, scanned=c.scan_layers, remat=c.remat, name="blocks")
        return layers(config=c, per_layer=per_layer_kwargs(c))(constrain(x), mask, deterministic)


_BASE = BertConfig()
register("bert-base-uncased", _BASE)
register("bert-base-cased", dataclasses.replace(_BASE, vocab_size=28996))
register("bert-large-uncased", dataclasses.replace(_BASE, d_model=1024, n_layer=24, n_head=16, d_ff=4096))
# The small uncased BERTs of Turc et al. (2019), "Well-Read Students Learn Better": 64-wide heads, 4H MLP.
register("bert-tiny", dataclasses.replace(_BASE, n_layer=2, d_model=128, n_head=2, d_ff=512))
register("bert-mini", dataclasses.replace(_BASE, n_layer=4, d_model=256, n_head=4, d_ff=1024))
register("bert-small", dataclasses.replace(_BASE, n_layer=4, d_model=512, n_head=8, d_ff=2048))
register("bert-medium", dataclasses.replace(_BASE, n_layer=8, d_model=512, n_head=8, d_ff=2048))
# MiniLM-L6-H384 (Wang et al. 2020), the body of sentence-transformers' all-MiniLM-L6-v2.
register("minilm-l6-h384-uncased", dataclasses.replace(_BASE, n_layer=6, d_model=384, n_head=12, d_ff=1536))
