"""Sampling continuations from a decoder (GPT / GPT-2) by recomputing the prefix each step.

The sequence lives in a fixed buffer the length of the context, so one compiled forward pass
serves every step; causal attention makes the positions after the current one irrelevant.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnames=("module", "max_new_tokens", "top_k"))
def _sample(module, params, buffer, length, rng, *, max_new_tokens, temperature, top_k):
    def body(i, carry):
        buffer, rng = carry
        pos = length + i
        logits = module.apply({"params": params}, buffer)[0, pos - 1].astype(jnp.float32)
        rng, key = jax.random.split(rng)
        if top_k:
            cutoff = jax.lax.top_k(logits, top_k)[0][-1]
            logits = jnp.where(logits < cutoff, -jnp.inf, logits)
        token = jnp.where(
            temperature > 0,
            jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6)),
            jnp.argmax(logits),
        )
        return buffer.at[0, pos].set(token), rng

    buffer, _ = jax.lax.fori_loop(0, max_new_tokens, body, (buffer, rng))
    return buffer


def generate(module, params, prompt_ids, max_new_tokens: int, *, rng=None, temperature: float = 1.0, top_k: int = 0):
    """Continue ``prompt_ids`` (a list of ints) by ``max_new_tokens`` tokens; returns the new ids.

    ``temperature`` 0 is greedy decoding; ``top_k`` > 0 samples among the k likeliest tokens.
    """
    context = module.config.n_positions
    prompt = list(prompt_ids)
    if not prompt:
        raise ValueError("the prompt is empty: give at least one token (e.g. the end-of-text id)")
    if len(prompt) + max_new_tokens > context:
        raise ValueError(
            f"prompt ({len(prompt)} tokens) + {max_new_tokens} new tokens exceed the context of {context}"
        )
    buffer = np.zeros((1, len(prompt) + max_new_tokens), np.int32)
    buffer[0, : len(prompt)] = prompt
    rng = jax.random.PRNGKey(0) if rng is None else rng
    out = _sample(module, params, jnp.asarray(buffer), len(prompt), rng,
                  max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k)
    return np.asarray(out[0, len(prompt):]).tolist()
