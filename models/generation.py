"""Sampling continuations from a decoder (GPT / GPT-2) with a KV cache, in one jitted function.

The prompts are left-padded to a common width, rounded up to a bucket (a power of two, at least
``MIN_BUCKET``) so that prompts of nearby lengths share one compiled function. The model reads the
padded prompts once (the prefill), filling its ``cache`` collection (``GPT(decode=True)``); a
``lax.while_loop`` then feeds one token per row per step until every row has produced its
end-of-text id or ``max_new_tokens``. Several samples of one prompt copy the prompt's cache
instead of recomputing it. The cache is created inside the jitted function and carried by the
loop, which XLA updates in place; it never crosses the function's boundary, so there is no
buffer to donate.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from models.gpt import output_table
from models.layers import check_ids

MIN_BUCKET = 16
NO_TOKEN = -1  # in the output buffer: the row had already stopped


@dataclasses.dataclass
class Generation:
    """What :func:`sample` returns. ``ids[i * num_samples + j]`` is sample j of prompt i: the new
    tokens, up to (without) the end-of-text id. ``seconds`` is the decoding time (prefill and
    loop), compilation excluded."""

    ids: list[list[int]]
    seconds: float
    compile_seconds: float
    steps: int  # loop iterations run (every row advances at each)

    @property
    def new_tokens(self) -> int:
        return sum(len(row) for row in self.ids)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds


def bucket(length: int, limit: int) -> int:
    """The padded prompt width: the next power of two (at least MIN_BUCKET), at most ``limit``."""
    return min(max(MIN_BUCKET, 1 << (length - 1).bit_length()), limit)


def init_cache(module, batch: int, slots: int) -> dict:
    """An empty decode cache for ``batch`` rows of ``slots`` tokens (zeros, built from shapes)."""
    shapes = jax.eval_shape(
        functools.partial(module.init, decode=True), jax.random.key(0), jnp.zeros((batch, slots), jnp.int32)
    )["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def left_pad(prompts: list[list[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    """int32 ids and mask [len(prompts), width], each prompt at the right end of its row."""
    ids = np.zeros((len(prompts), width), np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    return ids, mask


def top_p_filter(sorted_logits, top_p):
    """Keep the likeliest tokens whose probabilities sum to ``top_p`` (the first always), given
    logits sorted in decreasing order; the others become -inf."""
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    return jnp.where(before < top_p, sorted_logits, -jnp.inf)


def choose(logits, key, temperature, top_p, *, greedy: bool, top_k: int, nucleus: bool):
    """One token per row from fp32 logits [rows, vocab]: argmax when ``greedy``, else a draw at
    ``temperature`` among the ``top_k`` likeliest (0: all) and, when ``nucleus``, the smallest set
    of those holding probability ``top_p``."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if not (top_k or nucleus):
        return jax.random.categorical(key, logits).astype(jnp.int32)
    values, indices = jax.lax.top_k(logits, top_k or logits.shape[-1])  # sorted, decreasing
    if nucleus:
        values = top_p_filter(values, top_p)
    pick = jax.random.categorical(key, values)
    return jnp.take_along_axis(indices, pick[:, None], axis=-1)[:, 0].astype(jnp.int32)


@functools.partial(
    jax.jit, static_argnames=("module", "max_new_tokens", "num_samples", "greedy", "top_k", "nucleus")
)
def decode(module, params, ids, mask, rng, temperature, top_p, eos_id, vocab_size, *, max_new_tokens: int,
           num_samples: int, greedy: bool, top_k: int, nucleus: bool):
    """Prefill the left-padded prompts ``ids`` [batch, width], then sample up to ``max_new_tokens``
    per row, ``num_samples`` rows per prompt, among the ids below ``vocab_size``. Returns the new
    tokens [batch * num_samples, max_new_tokens] (``NO_TOKEN`` after a row's end-of-text) and the
    number of steps run."""

    def pick(logits, key):
        logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, -jnp.inf)
        return choose(logits, key, temperature, top_p, greedy=greedy, top_k=top_k, nucleus=nucleus)

    batch, width = ids.shape
    cache = init_cache(module, batch, width + max_new_tokens - 1)  # the last new token is never fed back
    logits, variables = module.apply({"params": params, "cache": cache}, ids, attention_mask=mask, decode=True,
                                     last_only=True, mutable=["cache"])
    repeat = functools.partial(jnp.repeat, repeats=num_samples, axis=0)  # every cache entry has the batch first
    cache, logits = jax.tree.map(repeat, variables["cache"]), repeat(logits[:, -1].astype(jnp.float32))
    rng, key = jax.random.split(rng)
    token = pick(logits, key)
    out = jnp.full((batch * num_samples, max_new_tokens), NO_TOKEN, jnp.int32).at[:, 0].set(token)

    def running(carry):
        i, _, _, done, _, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    table = output_table(module.config, params)  # transposed once: the loop reads it every token

    def step(carry):
        i, cache, token, done, out, rng = carry
        logits, variables = module.apply({"params": params, "cache": cache}, token[:, None], decode=True,
                                         output_table=table, mutable=["cache"])
        rng, key = jax.random.split(rng)
        token = pick(logits[:, -1].astype(jnp.float32), key)
        out = jax.lax.dynamic_update_slice(out, jnp.where(done, NO_TOKEN, token)[:, None], (0, i))
        return i + 1, variables["cache"], token, done | (token == eos_id), out, rng

    carry = (jnp.int32(1), cache, token, token == eos_id, out, rng)
    steps, _, _, _, out, _ = jax.lax.while_loop(running, step, carry)
    return out, steps


def check_options(max_new_tokens: int, *, num_samples: int, temperature: float, top_k: int, top_p: float) -> None:
    """Refuse sampling options that mean nothing, naming ``jaxlm generate``'s flag for each
    (a NaN temperature would otherwise give token 0 at every step)."""
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens={max_new_tokens}: ask for at least one new token")
    if num_samples < 1:
        raise ValueError(f"--num-samples={num_samples} must be at least 1")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"--temperature={temperature} must be a finite number, 0 or more (0: greedy decoding)")
    if not 0 < top_p <= 1:
        raise ValueError(f"--top-p={top_p} must lie in (0, 1]; 1 keeps every token")
    if top_k < 0:
        raise ValueError(f"--top-k={top_k} is negative: 0 keeps every token, k > 0 the k likeliest")


def check_request(config, prompts, max_new_tokens: int, *, num_samples: int, temperature: float, top_k: int,
                  top_p: float) -> None:
    """Refuse what cannot be generated, naming the problem and the fix."""
    check_options(max_new_tokens, num_samples=num_samples, temperature=temperature, top_k=top_k, top_p=top_p)
    if getattr(config, "family", None) != "gpt":
        raise ValueError(f"generation needs a decoder (GPT or GPT-2); this is a {type(config).__name__}")
    if not prompts:
        raise ValueError("no prompts: give at least one list of token ids")
    for i, prompt in enumerate(prompts):
        if not len(prompt):
            raise ValueError(f"prompt {i} is empty: give at least one token (e.g. the end-of-text id)")
        check_ids(np.asarray(prompt), config.vocab_size, f"prompt {i}'s token ids")
    longest, context = max(len(p) for p in prompts), config.n_positions
    if longest >= context:
        raise ValueError(f"the prompt ({longest} tokens) leaves no room for a new token in the model's context of "
                         f"{context} positions: shorten it to at most {context - 1} tokens")
    if longest + max_new_tokens > context:
        raise ValueError(
            f"prompt ({longest} tokens) + {max_new_tokens} new tokens exceed the context of {context} "
            f"positions: shorten the prompt or ask for at most {context - longest} new tokens (--max-new-tokens)"
        )
    if top_k > config.vocab_size:
        raise ValueError(f"--top-k={top_k} exceeds the model's vocabulary of {config.vocab_size} tokens; "
                         "0 keeps every token")


def sample(module, params, prompts, max_new_tokens: int, *, num_samples: int = 1, rng=None, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None, vocab_size: int | None = None) -> Generation:
    """Continue each prompt (a list of token ids) ``num_samples`` times by up to ``max_new_tokens``.

    ``temperature`` 0 is greedy decoding; ``top_k`` > 0 samples among the k likeliest tokens and
    ``top_p`` < 1 among the fewest whose probabilities sum to ``top_p`` (both may apply); a row
    stops after ``eos_id``. ``vocab_size`` (default: the model's) keeps the ids a tokenizer can
    decode when the model's vocabulary is padded larger.
    """
    prompts = [list(p) for p in prompts]
    config = module.config
    check_request(config, prompts, max_new_tokens, num_samples=num_samples, temperature=temperature, top_k=top_k,
                  top_p=top_p)
    vocab_size = config.vocab_size if vocab_size is None else vocab_size
    if not 0 < vocab_size <= config.vocab_size:
        raise ValueError(f"vocab_size={vocab_size} must lie in 1..{config.vocab_size}, the model's vocabulary")
    width = bucket(max(len(p) for p in prompts), config.n_positions - max_new_tokens)
    ids, mask = left_pad(prompts, width)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    args = (params, ids, mask, rng, jnp.float32(temperature), jnp.float32(top_p),
            jnp.int32(NO_TOKEN if eos_id is None else eos_id), jnp.int32(vocab_size))
    t0 = time.perf_counter()
    compiled = decode.lower(module, *args, max_new_tokens=max_new_tokens, num_samples=num_samples,
                            greedy=temperature == 0, top_k=top_k, nucleus=top_p < 1).compile()  # cached after once
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out, steps = jax.block_until_ready(compiled(*args))
    seconds = time.perf_counter() - t0
    return Generation(until_stop(out, eos_id), seconds, compile_s, int(steps))


def until_stop(out, eos_id: int | None) -> list[list[int]]:
    """The rows of a decoder's output buffer, each up to (without) its end-of-text id."""
    rows = []
    for row in np.asarray(out).tolist():
        stop = [i for i, t in enumerate(row) if t == NO_TOKEN or t == eos_id]
        rows.append(row[: stop[0]] if stop else row)
    return rows


def generate(module, params, prompt_ids, max_new_tokens: int, **options) -> list[int]:
    """One continuation of one prompt (a list of ints): the new ids. ``options`` as :func:`sample`."""
    return sample(module, params, [prompt_ids], max_new_tokens, **options).ids[0]
