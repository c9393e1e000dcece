"""ALBERT (Lan et al., 2020): BERT with fewer parameters, pretrained with masked-LM and
sentence-order prediction (SOP).

What changes from BERT (``models.bert``):

- Factorised embeddings: tables of width ``embedding_size`` (E, 128 in every release), projected
  to the hidden size H by one dense layer (``embedding_hidden_mapping_in``).
- Cross-layer parameter sharing: ``num_hidden_groups`` groups of ``inner_group_num`` layers;
  depth i (of ``num_hidden_layers``) applies group ``int(i / (num_hidden_layers /
  num_hidden_groups))``, as transformers does. Each group appears once in the parameter tree:
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
    hidden_act: str = "gelu_tanh"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    embedding_size: int = 128
    num_hidden_groups: int = 1
    inner_group_num: int = 1

    family = "albert"
    sentence_task = "sop"

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.num_hidden_groups <= self.num_hidden_layers:
            raise ValueError(
                f"num_hidden_groups={self.num_hidden_groups} must lie in 1..num_hidden_layers={self.num_hidden_layers}"
            )
        if self.pruned_heads:
            raise ValueError("head pruning is not supported for ALBERT: its layers are shared across depth, so a "
                             "head cannot be removed from one depth alone")
        for name in ("inner_group_num", "embedding_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")

    @property
    def group_depths(self) -> tuple[int, ...]:
        """How many consecutive depths each group serves: depth i applies group int(i / (L / G))."""
        per_group = self.num_hidden_layers / self.num_hidden_groups
        groups = [int(i / per_group) for i in range(self.num_hidden_layers)]
        return tuple(groups.count(g) for g in range(self.num_hidden_groups))

    def module(self, **kwargs) -> "ALBERT":
        return ALBERT(self, **kwargs)

    @property
    def head_depth(self) -> int:
        """Depth of the heads (pooler, MLM, SOP, a classifier head); see ``param_depths``."""
        return self.num_hidden_groups + 1

    def param_depths(self, params) -> dict:
        """0: the embeddings and their projection to the hidden size; 1..num_hidden_groups: the
        layer groups; then the heads.

        A group is one unit however many depths it serves, since one set of weights serves them
        all: with a single group (every released ALBERT) the depth-wise methods see three units,
        embeddings, the shared layer and the heads, so discriminative rates have three levels and
        gradual unfreezing at most three stages, whatever ``num_hidden_layers`` is. The layers
        inside a group (``inner_group_num``) share its depth too.
        """
        heads = dict.fromkeys(("pooler", "mlm", self.sentence_task), self.head_depth)
        fixed = {"embeddings": 0, "embedding_hidden_mapping_in": 0, **heads}
        return depth_tree(params, fixed, "group", self.num_hidden_groups)


class LayerGroup(nn.Module):
    """``inner_group_num`` consecutive layers, each with its own parameters; one ALBERT group."""

    config: AlbertConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        c = self.config
        layers = repeat_layers(TransformerBlock, c.inner_group_num, scanned=c.scan_layers, remat=c.remat, name="blocks")
        return layers(**c.block_kwargs())(x, mask, deterministic), None


class ALBERT(BERT):
    """BERT's embeddings, pooler and heads at width E, with shared layer groups in between."""

    config: AlbertConfig

    embedding_axis = "embed_factor"

    @property
    def embedding_size(self) -> int:
        return self.config.embedding_size

    def encode(self, x, mask, deterministic: bool):
        """E-wide embeddings -> H, then the groups, each shared by the depths it serves."""
        c = self.config
        project = dense(c.hidden_size, axes=("embed_factor", "embed"), std=c.initializer_range,
                        name="embedding_hidden_mapping_in", **c.dtypes())
        x = constrain(project(x))
        for g, depths in enumerate(c.group_depths):
            # Remat, if any, applies to the layers inside the group (remat of the group too would recompute twice).
            group = repeat_layers(LayerGroup, depths, scanned=c.scan_layers, remat="none", name=f"group_{g}", shared=True)
            x = group(config=c)(x, mask, deterministic)
        return x


_BASE = AlbertConfig()
register("albert-base-v2", _BASE)
register("albert-large-v2", dataclasses.replace(
    _BASE, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
))
register("albert-xlarge-v2", dataclasses.replace(
    _BASE, hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, intermediate_size=8192,
))
register("albert-xxlarge-v2", dataclasses.replace(
    _BASE, hidden_size=4096, num_hidden_layers=12, num_attention_heads=64, intermediate_size=16384,
))
# Small shapes for quick CPU runs (no released ALBERT is this small): bert-tiny's width, embeddings
# narrower than the hidden states, four depths sharing one group.
register("albert-tiny", dataclasses.replace(
    _BASE, hidden_size=128, num_hidden_layers=4, num_attention_heads=2, intermediate_size=512, embedding_size=64,
))
