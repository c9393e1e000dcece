"""ALBERT (Lan et al., 2020): BERT with fewer parameters, pretrained with masked-LM and
sentence-order prediction (SOP).

What changes from BERT (``models.bert``):

- Factorised embeddings: tables of width ``d_embed`` (E, 128 in every release), projected
  to the hidden size H (``d_model``) by one dense layer (``embedding_hidden_mapping_in``).
- Cross-layer parameter sharing: ``n_groups`` groups of ``layers_per_group`` layers; depth i (of
  ``n_layer``) applies group ``int(i / (n_layer / n_groups))``, as the reference does. Each group appears once in the parameter tree:
  with ``scan_layers`` its parameters are broadcast to every step of an ``nn.scan`` over the
  depths it serves, otherwise one module instance is called at each of those depths.
- The MLM head works at width E (dense H -> E, activation, LayerNorm, the E-wide word
  embeddings, bias); the sentence-level head predicts sentence order (``sop_logits``).
- The tanh GELU and, in the v2 releases, no dropout.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn

from models.bert import BERT, BertConfig
from models.layers import TransformerBlock, constrain, dense, depth_tree, repeat_layers
from models.registry import register


@dataclasses.dataclass(frozen=True)
class AlbertConfig(BertConfig):
    """BERT's fields (defaults of albert-base-v2) plus the factorisation and the sharing."""

    vocab_size: int = 30000
    activation: str = "gelu_tanh"
    embed_dropout: float = 0.0
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0
    d_embed: int = 128  # E: the factorised embeddings' width
    n_groups: int = 1  # layer groups, each shared by the depths it serves
    layers_per_group: int = 1

    family = "albert"
    sentence_task = "sop"

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.n_groups <= self.n_layer:
            raise ValueError(f"n_groups={self.n_groups} must lie in 1..n_layer={self.n_layer}")
        if self.pruned_heads:
            raise ValueError("head pruning is not supported for ALBERT: its layers are shared across depth, so a "
                             "head cannot be removed from one depth alone")
        for name in ("layers_per_group", "d_embed"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")

    @property
    def group_depths(self) -> tuple[int, ...]:
        """How many consecutive depths each group serves: depth i applies group int(i / (L / G))."""
        per_group = self.n_layer / self.n_groups
        groups = [int(i / per_group) for i in range(self.n_layer)]
        return tuple(groups.count(g) for g in range(self.n_groups))

    def module(self, **kwargs) -> "ALBERT":
        return ALBERT(self, **kwargs)

    @property
    def head_depth(self) -> int:
        """Depth of the heads (pooler, MLM, SOP, a classifier head); see ``param_depths``."""
        return self.n_groups + 1

    def param_depths(self, params) -> dict:
        """0: the embeddings and their projection to the hidden size; 1..n_groups: the layer groups;
        then the heads.

        A group is one unit however many depths it serves, since one set of weights serves them
        all: with a single group (every released ALBERT) the depth-wise methods see three units,
        embeddings, the shared layer and the heads, so discriminative rates have three levels and
        gradual unfreezing at most three stages, whatever ``n_layer`` is. The layers inside a
        group (``layers_per_group``) share its depth too.
        """
        heads = dict.fromkeys(("pooler", "mlm", self.sentence_task), self.head_depth)
        fixed = {"embeddings": 0, "embedding_hidden_mapping_in": 0, **heads}
        return depth_tree(params, fixed, "group", self.n_groups)


class LayerGroup(nn.Module):
    """``layers_per_group`` consecutive layers, each with its own parameters; one ALBERT group."""

    config: AlbertConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        c = self.config
        layers = repeat_layers(TransformerBlock, c.layers_per_group, scanned=c.scan_layers, remat=c.remat, name="blocks")
        return layers(config=c)(x, mask, deterministic), None


class ALBERT(BERT):
    """BERT's embeddings, pooler and heads at width E, with shared layer groups in between."""

    config: AlbertConfig

    embedding_axis = "embed_factor"

    def encode(self, x, mask, deterministic: bool):
        """E-wide embeddings -> H, then the groups, each shared by the depths it serves."""
        c = self.config
        project = dense(c.d_model, axes=("embed_factor", "embed"), std=c.initializer_range,
                        name="embedding_hidden_mapping_in", **c.dtypes())
        x = constrain(project(x))
        for g, depths in enumerate(c.group_depths):
            # Remat, if any, applies to the layers inside the group (remat of the group too would recompute twice).
            group = repeat_layers(LayerGroup, depths, scanned=c.scan_layers, remat="none", name=f"group_{g}", shared=True)
            x = group(config=c)(x, mask, deterministic)
        return x


_BASE = AlbertConfig()
register("albert-base-v2", _BASE)
register("albert-large-v2", dataclasses.replace(_BASE, d_model=1024, n_layer=24, n_head=16, d_ff=4096))
register("albert-xlarge-v2", dataclasses.replace(_BASE, d_model=2048, n_layer=24, n_head=16, d_ff=8192))
register("albert-xxlarge-v2", dataclasses.replace(_BASE, d_model=4096, n_layer=12, n_head=64, d_ff=16384))
# Small shapes for quick CPU runs (no released ALBERT is this small): bert-tiny's width, embeddings
# narrower than the hidden states, four depths sharing one group.
register("albert-tiny", dataclasses.replace(_BASE, d_model=128, n_layer=4, n_head=2, d_ff=512, d_embed=64))
