"""Adaptive softmax (Grave et al. 2017, "Efficient softmax approximation for GPUs"): an output
layer of frequency-sorted clusters for large vocabularies.

Token ids must be sorted by frequency (id 0 the most frequent; see
``train.data.vocab_order``). ``cutoffs`` [c_1, ..., c_n] split the vocabulary into a shortlist
[0, c_1) and n tail clusters [c_1, c_2), ..., [c_n, vocab). The head is a softmax over the
shortlist plus one entry per tail cluster; tail cluster i has its own softmax over its tokens,
computed from the hidden state projected down to ``d / div**(i+1)`` dimensions: rare tokens get
fewer parameters and fewer FLOPs. Then, exactly,

    log p(w) = log p_head(w)                        for w in the shortlist,
    log p(w) = log p_head(cluster i) + log p_i(w)   for w in cluster i.

The shortlist's output vectors are the input embedding's first c_1 rows (tied, as GPT-2 ties its
whole output layer); the cluster entries of the head and the tail clusters have their own weights.

Under ``jit`` the shapes are static, so every tail cluster is evaluated for every token (Grave
et al. evaluate a cluster only for the tokens whose target falls in it); the saving here comes
from the tails' narrow projections. :meth:`AdaptiveSoftmax.token_nll` gives the loss without
building the [tokens, vocab] array; calling the layer gives the full log-probabilities, which
sampling treats as logits (their softmax is the distribution itself).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.layers import normal, table_logits

Dtype = Any


def check_cutoffs(cutoffs, vocab_size: int) -> tuple[int, ...]:
    """``cutoffs`` as a tuple, or a ValueError naming what is wrong and how to fix it."""
    cutoffs = tuple(int(c) for c in cutoffs)
    if any(b <= a for a, b in zip(cutoffs, cutoffs[1:])):
        raise ValueError(f"adaptive_cutoffs {list(cutoffs)} must be strictly increasing: each one starts a cluster "
                         "of rarer tokens (e.g. [2000, 10000])")
    if cutoffs and cutoffs[0] < 1:
        raise ValueError(f"adaptive_cutoffs {list(cutoffs)}: the first cutoff is the shortlist size and must be at least 1")
    if cutoffs and cutoffs[-1] >= vocab_size:
        raise ValueError(f"adaptive_cutoffs {list(cutoffs)} must lie below the vocabulary size {vocab_size}: "
                         "the last cluster runs from the last cutoff to the end of the vocabulary")
    return cutoffs


def cluster_widths(features: int, n_clusters: int, div: float) -> list[int]:
    """The projection width of each tail cluster: features / div**(i+1), at least 1."""
    return [max(1, int(features // div ** (i + 1))) for i in range(n_clusters)]


class AdaptiveSoftmax(nn.Module):
    vocab_size: int
    cutoffs: tuple[int, ...]
    features: int
    div: float = 4.0
    init_std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        n = len(self.cutoffs)
        bounds = (*self.cutoffs, self.vocab_size)
        self.cluster_embedding = self.param(
            "cluster_embedding", normal(self.init_std, (None, "embed")), (n, self.features), self.param_dtype)
        self.projections = [
            self.param(f"tail_{i}_projection", normal(self.init_std, ("embed", None)), (self.features, width),
                       self.param_dtype)
            for i, width in enumerate(cluster_widths(self.features, n, self.div))
        ]
        self.outputs = [
            self.param(f"tail_{i}_embedding", normal(self.init_std, ("vocab", None)), (bounds[i + 1] - bounds[i], width),
                       self.param_dtype)
            for i, width in enumerate(cluster_widths(self.features, n, self.div))
        ]

    def _head(self, h, shortlist_table):
        """log p over [shortlist..., cluster 1, ..., cluster n], in fp32. The shortlist's rows may be
        int8 (``models.quantize``), as the input table they are."""
        logits = [table_logits(h, table, self.dtype) for table in (shortlist_table[: self.cutoffs[0]], self.cluster_embedding)]
        return jax.nn.log_softmax(jnp.concatenate(logits, axis=-1), axis=-1)

    def _tail(self, h, i):
        """log p within tail cluster i, in fp32."""
        z = jnp.einsum("...d,dk->...k", h, self.projections[i].astype(self.dtype))
        logits = jnp.einsum("...k,vk->...v", z, self.outputs[i].astype(self.dtype))
        return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)

    def __call__(self, h, shortlist_table):
        """Exact log-probabilities over the whole vocabulary [..., vocab] (fp32)."""
        head = self._head(h, shortlist_table)
        short = self.cutoffs[0]
        parts = [head[..., :short]]
        for i in range(len(self.cutoffs)):
            parts.append(head[..., short + i, None] + self._tail(h, i))
        return jnp.concatenate(parts, axis=-1)

    def token_nll(self, h, shortlist_table, targets):
        """-log p(target) and whether the most probable token is the target, per position, without
        the [..., vocab] array."""
        head = self._head(h, shortlist_table)
        bounds = (*self.cutoffs, self.vocab_size)
        short = self.cutoffs[0]
        logp = jnp.take_along_axis(head, jnp.clip(targets, 0, short - 1)[..., None], -1)[..., 0]
        best, best_id = head[..., :short].max(-1), head[..., :short].argmax(-1)
        for i in range(len(self.cutoffs)):
            start, size = bounds[i], bounds[i + 1] - bounds[i]
            tail = head[..., short + i, None] + self._tail(h, i)
            inside = (targets >= start) & (targets < start + size)
            picked = jnp.take_along_axis(tail, jnp.clip(targets - start, 0, size - 1)[..., None], -1)[..., 0]
            logp = jnp.where(inside, picked, logp)
            better = tail.max(-1) > best
            best, best_id = jnp.where(better, tail.max(-1), best), jnp.where(better, start + tail.argmax(-1), best_id)
        return -logp, best_id == targets


def adaptive_softmax(config) -> AdaptiveSoftmax:
    """The output layer of a GPT config with ``adaptive_cutoffs``."""
    return AdaptiveSoftmax(
        config.vocab_size, config.adaptive_cutoffs, config.d_model, config.adaptive_div, config.initializer_range,
        dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype), name="adaptive_softmax",
    )


def token_nll(config, params, hidden, targets):
    """Per-position -log p(target) and argmax == target of a GPT with an adaptive softmax, from its
    final hidden states (``module.apply(..., return_hidden=True)``)."""
    head = adaptive_softmax(config)
    return head.apply({"params": params["adaptive_softmax"]}, hidden, params["wte"]["embedding"], targets,
                      method=AdaptiveSoftmax.token_nll)
