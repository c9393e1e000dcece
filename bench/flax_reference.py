"""The Flax reference contenders: transformers 4.57.6's ``FlaxGPT2LMHeadModel`` trained with
``jax.value_and_grad`` + optax AdamW in one jitted step, params and optimizer state donated; and,
for inference, its ``generate``.

It runs in its own virtual environment with our jax, flax and optax (``bench.workers``) and uses
only numpy, jax, optax and transformers, never our packages.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import optax
import transformers

from bench.measure import (
    Contender,
    HostMemory,
    Workloads,
    device_peak_bytes,
    versions,
    xla_memory,
)
from bench.spec import EPS, BenchSpec, random_tokens, warmup_cosine_fn


def flax_reference_step(spec: BenchSpec, hf_config: dict, optimizer: dict) -> Contender:
    """transformers' ``FlaxGPT2LMHeadModel`` trained with ``jax.value_and_grad`` + optax AdamW."""
    transformers.logging.set_verbosity_error()
    memory = HostMemory()
    memory.start()
    cfg = transformers.GPT2Config(**hf_config)
    model = transformers.FlaxGPT2LMHeadModel(cfg, seed=spec.seed, dtype=jnp.dtype(spec.dtype))
    params = model.params
    train = spec.dropout == "on"

    def decay(tree):  # matrices only, as optim.adamw: no biases, LayerNorm gains or embeddings
        return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "kernel", tree)

    tx = optax.chain(
        optax.clip_by_global_norm(optimizer["clip_norm"]),
        optax.adamw(warmup_cosine_fn(optimizer, spec.total_steps), b1=optimizer["b1"], b2=optimizer["b2"], eps=EPS,
                    weight_decay=optimizer["weight_decay"], mask=decay),
    )

    def loss_fn(params, inputs, targets, rng):
        logits = model(inputs, params=params, dropout_rng=rng if train else None, train=train).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets).mean()

    def step(params, opt_state, inputs, targets, rng):
        loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    t0 = time.perf_counter()
    opt_state = jax.jit(tx.init)(params)
    jax.block_until_ready(opt_state)
    init_s = time.perf_counter() - t0
    inputs, targets = (jnp.asarray(x) for x in random_tokens(spec, cfg.vocab_size))
    rng = jax.random.key(spec.seed + 1)
    jitted = jax.jit(step, donate_argnums=(0, 1))
    t0 = time.perf_counter()
    lowered = jitted.lower(params, opt_state, inputs, targets, rng)
    trace_s = time.perf_counter() - t0
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    holder = {"params": params, "opt_state": opt_state, "i": 0}
    del params, opt_state  # donated to the first step (model.params is invalidated with them)

    def call():
        holder["i"] += 1
        p, o, loss = compiled(holder["params"], holder["opt_state"], inputs, targets,
                              jax.random.fold_in(rng, holder["i"]))
        jax.block_until_ready((p, o))
        holder.update(params=p, opt_state=o, loss=loss)

    def describe():
        return {
            "implementation": f"transformers {transformers.__version__} FlaxGPT2LMHeadModel, jax.value_and_grad + "
                              "optax.adamw, jit with params and opt_state donated",
            "versions": versions("jax", "jaxlib", "flax", "optax", "transformers", "numpy"),
            "python_executable": sys.executable,
            "init_s": init_s,
            "trace_s": trace_s,
            "compile_s": compile_s,
            "last_loss": float(holder["loss"]),
            "device_peak_bytes": device_peak_bytes(),
            "xla_memory": xla_memory(compiled),
        }

    return Contender(call, describe, memory, spec.warmup)


def flax_generate(payload: dict) -> Workloads:
    """transformers' ``FlaxGPT2LMHeadModel.generate`` (greedy, its KV cache), under ``jax.jit``,
    exactly ``new_tokens`` new tokens per row, at each batch size."""
    transformers.logging.set_verbosity_error()
    cfg = transformers.GPT2Config(**payload["hf_config"])
    model = transformers.FlaxGPT2LMHeadModel(cfg, seed=payload["seed"], dtype=jnp.float32)
    prompts = jnp.asarray(payload["prompts"], jnp.int32)
    new = payload["new_tokens"]
    length = prompts.shape[1] + new
    generate = jax.jit(lambda params, ids: model.generate(
        ids, params=params, max_new_tokens=new, min_length=length, do_sample=False, pad_token_id=0).sequences)
    calls, compile_s = {}, {}
    for batch in payload["batch_sizes"]:
        ids = prompts[:batch]
        t0 = time.perf_counter()
        jax.block_until_ready(generate(model.params, ids))
        compile_s[f"decode_b{batch}"] = time.perf_counter() - t0
        calls[f"decode_b{batch}"] = lambda ids=ids: jax.block_until_ready(generate(model.params, ids))

    def describe():
        return {
            "implementation": f"transformers {transformers.__version__} FlaxGPT2LMHeadModel.generate (greedy), "
                              "jax.jit",
            "versions": versions("jax", "jaxlib", "flax", "transformers", "numpy"),
            "python_executable": sys.executable,
            "compile_s": compile_s,
        }

    return Workloads(calls, describe, payload.get("warmup", 1))
