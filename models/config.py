"""The shape vocabulary every family shares: one set of names for GPT, GPT-2, BERT and ALBERT.

``TransformerConfig`` holds what every transformer stack has (the names of GPT-2's paper and
nanoGPT: ``d_model``, ``n_layer``, ``n_head``, ``d_ff``, ``n_positions``), the checks they share,
and what the shared blocks (``models.layers.TransformerBlock``) read from it. A family adds only
what is its own: GPT-2's ``pre_ln``/``final_ln``/``scale_residual_init``, BERT's segments and
heads, ALBERT's factorised ``d_embed`` and layer groups. Hugging Face's names live in
``models.hf`` alone.

Configs saved before this vocabulary (run folders' ``run.json``) load through one rename table,
``RENAMED``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax.numpy as jnp

from models.layers import ACTIVATIONS, ATTENTION, DTYPES, REMAT_POLICIES
from models.lora import TARGETS as LORA_TARGETS

# Field names of configs saved before the shared vocabulary -> today's names. BERT's one hidden
# dropout rate served the embeddings and the residual branches, which are two fields now.
RENAMED: dict[str, tuple[str, ...]] = {
    "hidden_size": ("d_model",),
    "num_hidden_layers": ("n_layer",),
    "num_attention_heads": ("n_head",),
    "intermediate_size": ("d_ff",),
    "max_position_embeddings": ("n_positions",),
    "hidden_act": ("activation",),
    "hidden_dropout_prob": ("embed_dropout", "resid_dropout"),
    "attention_probs_dropout_prob": ("attn_dropout",),
    "embd_dropout": ("embed_dropout",),
    "type_vocab_size": ("n_segments",),
    "embedding_size": ("d_embed",),
    "num_hidden_groups": ("n_groups",),
    "inner_group_num": ("layers_per_group",),
}


def renamed(fields: dict) -> dict:
    """Config fields with the names of ``RENAMED`` replaced by today's (other keys kept)."""
    out = {}
    for key, value in fields.items():
        for name in RENAMED.get(key, (key,)):
            out[name] = value
    return out


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """The fields every family has; defaults are GPT-2 small's."""

    vocab_size: int = 50257
    n_positions: int = 1024  # context length: the learned position table's size
    d_model: int = 768
    n_layer: int = 12
    n_head: int = 12
    d_ff: int = 3072  # the MLP's inner width
    activation: str = "gelu_tanh"  # one of models.layers.ACTIVATIONS
    layer_norm_eps: float = 1e-5
    embed_dropout: float = 0.1  # on the summed input embeddings
    attn_dropout: float = 0.1  # on the attention probabilities
    resid_dropout: float = 0.1  # on each residual branch's output
    initializer_range: float = 0.02  # std of the normal initialisers
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    scan_layers: bool = False  # True: one nn.scan over the layers (one compiled layer)
    remat: str = "none"  # one of models.layers.REMAT_POLICIES
    # How attention is computed (models.layers.ATTENTION): "xla" lets XLA choose; "cudnn" asks for
    # cuDNN's fused (flash) kernel on GPUs and is XLA's elsewhere. The same function either way.
    attention: str = "xla"
    # Attention heads removed, per layer (original indices; models.heads_pruning); () for none.
    pruned_heads: tuple[tuple[int, ...], ...] = ()
    # LoRA adapters (models.lora, Hu et al. 2021): rank 0 for none; the update x A B * alpha / rank
    # on the dense layers of lora_targets ("attention", "mlp" or "all").
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: str = "attention"

    DROPOUTS: ClassVar[tuple[str, ...]] = ("embed_dropout", "attn_dropout", "resid_dropout")
    family: ClassVar[str] = ""
    causal: ClassVar[bool] = False  # decoders attend to earlier tokens only
    pre_ln: ClassVar[bool] = False  # LayerNorm at each sub-block's input (GPT-2 makes it a field)

    def __post_init__(self):
        for name in ("vocab_size", "n_positions", "d_model", "n_layer", "n_head", "d_ff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {list(DTYPES)}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"unknown remat policy {self.remat!r}; choose one of {sorted(REMAT_POLICIES)}")
        if self.attention not in ATTENTION:
            raise ValueError(f"unknown attention {self.attention!r}; choose one of {list(ATTENTION)}")
        for name in self.DROPOUTS:
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must lie in [0, 1)")
        if not (self.layer_norm_eps > 0 and math.isfinite(self.layer_norm_eps)):
            raise ValueError(f"layer_norm_eps={self.layer_norm_eps} must be a positive number")
        if not (self.initializer_range >= 0 and math.isfinite(self.initializer_range)):
            raise ValueError(f"initializer_range={self.initializer_range} must be a non-negative number")
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise ValueError(f"lora_rank={self.lora_rank!r} must be 0 (no adapters) or a positive integer")
        if not (self.lora_alpha > 0 and math.isfinite(self.lora_alpha)):
            raise ValueError(f"lora_alpha={self.lora_alpha} must be a positive number (the update is scaled by "
                             "alpha / rank)")
        if self.lora_targets not in LORA_TARGETS:
            raise ValueError(f"lora_targets={self.lora_targets!r}; choose one of {list(LORA_TARGETS)}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def residual_init_std(self) -> float:
        """Std of the residual branches' output projections (GPT-2 scales it down)."""
        return self.initializer_range

    def dtypes(self) -> dict:
        """``dtype`` and ``param_dtype`` as the modules take them."""
        return dict(dtype=jnp.dtype(self.dtype), param_dtype=jnp.dtype(self.param_dtype))

    def without_dropout(self):
        """The same model with every dropout rate at 0 (evaluation, benchmarks, distillation targets)."""
        return dataclasses.replace(self, **dict.fromkeys(self.DROPOUTS, 0.0))
