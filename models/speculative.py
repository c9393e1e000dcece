"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model proposes
``k`` tokens from its own KV cache, the target scores all ``k + 1`` positions in one cached
forward pass and keeps a prefix, and both caches roll back to the kept length.

One jitted function with static shapes, like :func:`models.generation.decode`. Each iteration of
its ``lax.while_loop``:

1. the draft feeds the last token and its own ``k`` proposals (``k + 1`` cached steps; the last
   only puts ``d_k`` in its cache), proposing ``d_1..d_k`` from its distributions ``q_1..q_k``;
2. the target feeds ``[last, d_1..d_k]`` at once: its distributions ``p_1..p_{k+1}``;
3. position ``j`` accepts ``d_j`` with probability ``min(1, p_j(d_j) / q_j(d_j))``; the first
   rejected position draws from the residual ``max(p_j - q_j, 0)`` (normalised) instead, and when
   all ``k`` are accepted a bonus token comes from ``p_{k+1}``. Each emitted token is then a draw
   from the target's own distribution given the tokens before it (greedy: ``d_j`` is accepted
   when it is the target's argmax, and the target's argmax is emitted). ``p`` and ``q`` are the
   sampling distributions after temperature, top-k and top-p, as :func:`models.generation.choose`
   draws from;
4. the rows of a batch share one cache index, so every row keeps the fewest tokens any live row
   accepted, ``m``, plus one: the next token of every row is a draw from the target given its
   prefix whether the row accepted more or not, so the output stays exact;
5. both caches roll back to the kept length: their ``index`` moves back and the slots past it
   leave the cache ``mask`` (the keys and values there are overwritten by the next writes).
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp

from models.generation import (
    NO_TOKEN,
    Generation,
    bucket,
    check_request,
    init_cache,
    left_pad,
    top_p_filter,
    until_stop,
)
from models.gpt import output_table


@dataclasses.dataclass
class SpeculativeGeneration(Generation):
    """:class:`models.generation.Generation` plus the draft's record: ``proposed`` draft tokens
    (``k`` per live row and iteration) of which the target ``accepted`` (before the batch's
    common prefix is taken)."""

    proposed: int = 0
    accepted: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


def sampling_probs(logits, temperature, top_p, *, top_k: int, nucleus: bool):
    """The distribution :func:`models.generation.choose` draws from, over the whole vocabulary:
    softmax(logits / temperature) restricted to the ``top_k`` likeliest and the top-p nucleus."""
    logits = logits / temperature
    if top_k or nucleus:
        values, indices = jax.lax.top_k(logits, top_k or logits.shape[-1])
        if nucleus:
            values = top_p_filter(values, top_p)
        logits = jnp.put_along_axis(jnp.full_like(logits, -jnp.inf), indices, values, axis=-1, inplace=False)
    return jax.nn.softmax(logits, axis=-1)


def accept(p_drafted, q_drafted, u):
    """Speculative sampling's test: keep a drafted token with probability min(1, p/q)."""
    return u * q_drafted < p_drafted


def residual(p, q):
    """The distribution a rejected position draws from: max(p - q, 0), normalised (p itself
    where q covers p everywhere, which only happens when nothing is rejected)."""
    r = jnp.maximum(p - q, 0.0)
    total = r.sum(-1, keepdims=True)
    return jnp.where(total > 0, r / jnp.where(total > 0, total, 1.0), p)


def rollback(cache, drop):
    """A decode cache with its last ``drop`` slots (a scalar: the rows share one index) taken
    back: every ``index`` moves back and the top-level ``mask`` forgets those slots."""
    kept = cache["index"] - drop  # [batch]
    cache = jax.tree_util.tree_map_with_path(
        lambda path, leaf: leaf - drop if getattr(path[-1], "key", None) == "index" else leaf, cache)
    slots = cache["mask"].shape[-1]
    return {**cache, "mask": cache["mask"] & (jnp.arange(slots)[None, :] < kept[:, None])}


@functools.partial(jax.jit, static_argnames=("target", "draft", "max_new_tokens", "k", "num_samples", "greedy",
                                             "top_k", "nucleus"))
def speculative_decode(target_params, draft_params, ids, mask, rng, temperature, top_p, eos_id, vocab_size, *,
                       target, draft, max_new_tokens: int, k: int, num_samples: int, greedy: bool, top_k: int,
                       nucleus: bool):
    """:func:`models.generation.decode` with a draft proposing ``k`` tokens per target pass.
    Returns the new tokens [batch * num_samples, max_new_tokens] (``NO_TOKEN`` after a row's
    end-of-text), the target's passes after the prefill (the loop's iterations), and the draft
    tokens proposed and accepted."""
    batch, width = ids.shape
    slots = width + max_new_tokens + k  # the last pass may feed k tokens past the last one kept

    def masked(logits):  # fp32, ids at or past vocab_size never drawn
        return jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits.astype(jnp.float32), -jnp.inf)

    def probs(logits):
        return sampling_probs(logits, temperature, top_p, top_k=top_k, nucleus=nucleus)

    def prefill(module, params):
        logits, variables = module.apply({"params": params, "cache": init_cache(module, batch, slots)}, ids,
                                         attention_mask=mask, decode=True, last_only=True, mutable=["cache"])
        repeat = functools.partial(jnp.repeat, repeats=num_samples, axis=0)
        return repeat(masked(logits[:, -1])), jax.tree.map(repeat, variables["cache"])

    tables = output_table(target.config, target_params), output_table(draft.config, draft_params)

    def forward(which, cache, tokens):
        module, params = (target, target_params) if which == 0 else (draft, draft_params)
        logits, variables = module.apply({"params": params, "cache": cache}, tokens, decode=True,
                                         output_table=tables[which], mutable=["cache"])
        return masked(logits), variables["cache"]

    logits, target_cache = prefill(target, target_params)
    _, draft_cache = prefill(draft, draft_params)
    rows = batch * num_samples
    rng, key = jax.random.split(rng)
    token = (jnp.argmax(logits, -1) if greedy else jax.random.categorical(key, jnp.log(probs(logits)))).astype(jnp.int32)
    out = jnp.full((rows, max_new_tokens + k + 1), NO_TOKEN, jnp.int32).at[:, 0].set(token)

    def propose(carry, key):  # one cached draft step: feed the last token, draw the next
        cache, last = carry
        logits, cache = forward(1, cache, last[:, None])
        if greedy:
            nxt, q = jnp.argmax(logits[:, -1], -1), jnp.zeros((rows, 0))
        else:
            q = probs(logits[:, -1])
            nxt = jax.random.categorical(key, jnp.log(q))
        return (cache, nxt.astype(jnp.int32)), (nxt.astype(jnp.int32), q)

    def step(carry):
        i, passes, target_cache, draft_cache, token, done, out, rng, proposed, accepted = carry
        rng, draft_key, accept_key, residual_key, bonus_key = jax.random.split(rng, 5)
        # k + 1 draft steps: the last one only writes d_k into the draft's cache
        (draft_cache, _), (drafted, q) = jax.lax.scan(propose, (draft_cache, token),
                                                      jax.random.split(draft_key, k + 1))
        drafted = drafted[:k].T  # [rows, k]
        logits, target_cache = forward(0, target_cache, jnp.concatenate([token[:, None], drafted], 1))
        if greedy:
            choice = jnp.argmax(logits, -1).astype(jnp.int32)  # [rows, k + 1]
            ok = drafted == choice[:, :k]
        else:
            p, q = probs(logits), q[:k].transpose(1, 0, 2)  # [rows, k + 1, vocab], [rows, k, vocab]
            at = lambda x: jnp.take_along_axis(x, drafted[..., None], -1)[..., 0]  # noqa: E731
            ok = accept(at(p[:, :k]), at(q), jax.random.uniform(accept_key, (rows, k)))
            fix = jax.random.categorical(residual_key, jnp.log(residual(p[:, :k], q)))
            bonus = jax.random.categorical(bonus_key, jnp.log(p[:, k]))
            choice = jnp.concatenate([jnp.where(ok, drafted, fix), bonus[:, None]], 1).astype(jnp.int32)
        n = jnp.cumprod(ok, axis=1).sum(1)  # each row's accepted prefix
        m = jnp.min(jnp.where(done, k, n))  # the prefix every live row accepted
        kept = jnp.arange(k + 1)[None, :] <= m
        eos = (choice == eos_id) & kept
        after_eos = jnp.cumsum(eos, 1) - eos > 0
        window = jnp.where(done[:, None] | after_eos | ~kept, NO_TOKEN, choice)
        out = jax.lax.dynamic_update_slice(out, window, (0, i))
        live = (~done).sum()
        proposed, accepted = proposed + k * live, accepted + jnp.where(done, 0, n).sum()
        token = choice[:, m]  # the next token to feed, in neither cache yet
        # both caches took [last, d_1..d_k]; they keep [last, d_1..d_m]
        target_cache, draft_cache = rollback(target_cache, k - m), rollback(draft_cache, k - m)
        return (i + m + 1, passes + 1, target_cache, draft_cache, token, done | eos.any(1), out, rng, proposed,
                accepted)

    carry = (jnp.int32(1), jnp.int32(0), target_cache, draft_cache, token, token == eos_id, out, rng, jnp.int32(0),
             jnp.int32(0))
    _, passes, _, _, _, _, out, _, proposed, accepted = jax.lax.while_loop(
        lambda c: (c[0] < max_new_tokens) & ~jnp.all(c[5]), step, carry)
    return out[:, :max_new_tokens], passes, proposed, accepted


def first_layers(module, params, n: int):
    """A draft made of the target's own first ``n`` layers, its embeddings and its final LayerNorm
    (its output layer is the tied table): ``(module, params)``, sharing the target's arrays."""
    config = module.config
    if not 1 <= n < config.n_layer:
        raise ValueError(f"a draft of the target's first layers keeps 1 to {config.n_layer - 1} of its "
                         f"{config.n_layer} layers; got {n}")
    if config.scan_layers:
        blocks = {"blocks": jax.tree.map(lambda x: x[:n], params["blocks"])}
    else:
        blocks = {f"blocks_{i}": params[f"blocks_{i}"] for i in range(n)}
    rest = {key: value for key, value in params.items() if not key.startswith("blocks")}
    kept = dataclasses.replace(config, n_layer=n, pruned_heads=config.pruned_heads[:n])
    return type(module)(kept), {**rest, **blocks}


def check_draft(target_config, draft_config, k: int) -> None:
    """Refuse a draft that cannot propose for this target, naming the fix."""
    if k < 1:
        raise ValueError(f"--speculate={k}: the draft must propose at least 1 token per target pass")
    if getattr(draft_config, "family", None) != "gpt":
        raise ValueError(f"the draft must be a decoder (GPT or GPT-2); this is a {type(draft_config).__name__}")
    if draft_config.vocab_size != target_config.vocab_size:
        raise ValueError(f"the draft's vocabulary ({draft_config.vocab_size} ids) differs from the target's "
                         f"({target_config.vocab_size}): use a draft trained with the target's tokenizer")
    if draft_config.n_positions < target_config.n_positions:
        raise ValueError(f"the draft's context ({draft_config.n_positions} positions) is shorter than the target's "
                         f"({target_config.n_positions}): use a draft with at least the target's context")


def speculative_sample(target, target_params, draft, draft_params, prompts, max_new_tokens: int, *, k: int,
                       num_samples: int = 1, rng=None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                       eos_id: int | None = None, vocab_size: int | None = None) -> SpeculativeGeneration:
    """:func:`models.generation.sample` with ``draft`` proposing ``k`` tokens per pass of ``target``:
    the same output distribution (greedy: the same tokens), fewer passes of the target."""
    prompts = [list(p) for p in prompts]
    config = target.config
    check_draft(config, draft.config, k)
    check_request(config, prompts, max_new_tokens + k, num_samples=num_samples, temperature=temperature,
                  top_k=top_k, top_p=top_p)  # the last pass may feed k tokens past the last one kept
    vocab_size = config.vocab_size if vocab_size is None else vocab_size
    width = bucket(max(len(p) for p in prompts), config.n_positions - max_new_tokens - k)
    ids, mask = left_pad(prompts, width)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    args = (target_params, draft_params, ids, mask, rng, jnp.float32(temperature), jnp.float32(top_p),
            jnp.int32(NO_TOKEN if eos_id is None else eos_id), jnp.int32(vocab_size))
    t0 = time.perf_counter()
    compiled = speculative_decode.lower(*args, target=target, draft=draft, max_new_tokens=max_new_tokens, k=k,
                                        num_samples=num_samples, greedy=temperature == 0, top_k=top_k,
                                        nucleus=top_p < 1).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out, steps, proposed, accepted = jax.block_until_ready(compiled(*args))
    seconds = time.perf_counter() - t0
    return SpeculativeGeneration(until_stop(out, eos_id), seconds, compile_s, int(steps), int(proposed),
                                 int(accepted))
