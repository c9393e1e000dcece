"""Inference cost of smaller-model variants (pruned, head-pruned, distilled, adaptive softmax) side by
side with their fp32 baseline, measured in one process on the same device.

For each variant: parameter count and bytes (and the nonzero count: unstructured sparsity stores
and multiplies its zeros like any other weight), the forward pass over a batch (time per token and
tokens/s, the prompt-reading cost), and sampling (time per new token, greedy, one sequence).
Every time is the median of ``steps`` interleaved rounds after compilation and ``warmup`` untimed
calls, and each variant's ratio to the baseline comes from the same run. Decoding uses the cached decoder of
``models.generation.sample`` where the model has one (``GPT(decode=True)``), else
``models.generation.generate``, which recomputes the prefix at each step; ``decode`` in the rows
says which. Quality is the caller's (it needs the variant's own data and tokenizer).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import jax
import numpy as np

import models
from models import generation


@dataclasses.dataclass
class Variant:
    name: str
    module: Any
    params: Any
    quality: dict = dataclasses.field(default_factory=dict)  # e.g. validation loss and perplexity


@dataclasses.dataclass(frozen=True)
class InferSpec:
    batch_size: int = 8
    seq_len: int = 128
    prompt_len: int = 16
    new_tokens: int = 32
    steps: int = 7  # interleaved timed rounds
    warmup: int = 1


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _decoder(module, params, prompt, new_tokens):
    """``(call, kind)``: one greedy continuation, with the KV cache where the library has one."""
    if hasattr(generation, "sample"):  # the KV-cache decoder (issue 10)
        return (lambda: generation.sample(module, params, [prompt], new_tokens, temperature=0.0)), "kv-cache"
    return (lambda: generation.generate(module, params, prompt, new_tokens, temperature=0.0)), "recompute"


def _calls(variant: Variant, spec: InferSpec) -> dict:
    """The variant's forward pass over a batch and its greedy decode, each blocking on its result."""
    module, params = variant.module, variant.params
    ids = np.random.default_rng(0).integers(0, module.config.vocab_size, (spec.batch_size, spec.seq_len))
    forward = jax.jit(lambda p, x: module.apply({"params": p}, x))
    decode, kind = _decoder(module, params, ids[0, : spec.prompt_len].tolist(), spec.new_tokens)
    return {"forward": lambda: jax.block_until_ready(forward(params, ids.astype(np.int32))), "decode": decode,
            "kind": kind}


def compare(variants: list[Variant], spec: InferSpec = InferSpec()) -> list[dict]:
    """One row per variant, the first being the baseline, with ratios to it (below 1: smaller or
    faster). After compiling and ``warmup`` untimed calls, the variants are timed in ``steps``
    interleaved rounds (one forward pass and one decode each), so a change in the machine's speed
    hits all of them alike; each time is the median over the rounds."""
    calls = [_calls(v, spec) for v in variants]
    for c in calls:
        for _ in range(1 + spec.warmup):
            c["forward"](), c["decode"]()
    times = [{"forward": [], "decode": []} for _ in variants]
    for _ in range(spec.steps):
        for c, t in zip(calls, times):
            t["forward"].append(_timed(c["forward"]))
            t["decode"].append(_timed(c["decode"]))
    tokens = spec.batch_size * spec.seq_len
    rows = []
    for v, c, t in zip(variants, calls, times):
        leaves = jax.tree.leaves(v.params)
        forward_s, decode_s = statistics.median(t["forward"]), statistics.median(t["decode"])
        rows.append({
            "variant": v.name,
            "params": models.count_params(v.params),
            "nonzero_params": int(sum(np.count_nonzero(np.asarray(x)) for x in leaves)),
            "param_bytes": int(sum(np.asarray(x).nbytes for x in leaves)),
            "forward_ms_per_token": 1e3 * forward_s / tokens,
            "forward_tokens_per_s": tokens / forward_s,
            "decode_ms_per_token": 1e3 * decode_s / spec.new_tokens,
            "decode_tokens_per_s": spec.new_tokens / decode_s,
            "decode": c["kind"],
            **v.quality,
        })
    base = rows[0]
    for row in rows:
        for key in ("param_bytes", "forward_ms_per_token", "decode_ms_per_token"):
            row[f"{key}_vs_baseline"] = row[key] / base[key]
        if "loss" in row and "loss" in base:
            row["loss_change"] = row["loss"] - base["loss"]
    return rows


def compare_train_steps(modules: list, spec: InferSpec = InferSpec(), learning_rate: float = 1e-3) -> list[float]:
    """Median train-step seconds (the loop's jitted AdamW step, language modelling, a random batch
    of ``batch_size`` x ``seq_len``) of each module, timed in ``steps`` interleaved rounds."""
    import optim
    from train import sharding
    from train.step import init_state, make_train_step
    from train.tasks import LanguageModeling

    mesh = sharding.make_mesh()
    rng = np.random.default_rng(0)
    steps = []
    for module in modules:
        tx = optim.adamw(learning_rate)
        state, shardings = init_state(module, tx, jax.random.key(0), mesh)
        step = make_train_step(module, LanguageModeling, tx, jax.random.key(1), shardings, mesh, grad_accum=1)
        ids = rng.integers(0, module.config.vocab_size, (1, spec.batch_size, spec.seq_len + 1)).astype(np.int32)
        batch = {"inputs": ids[..., :-1], "targets": ids[..., 1:]}
        holder = {"state": state}

        def call(step=step, batch=batch, holder=holder):
            holder["state"], sums = step(holder["state"], batch)
            jax.block_until_ready(sums)

        steps.append(call)
    for call in steps:
        for _ in range(1 + spec.warmup):
            call()
    times = [[] for _ in steps]
    for _ in range(spec.steps):
        for call, t in zip(steps, times):
            t.append(_timed(call))
    return [statistics.median(t) for t in times]


def environment() -> dict:
    return {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__}
