"""Inference cost of smaller-model variants (pruned, head-pruned, distilled, adaptive softmax) side by
side with their fp32 baseline, measured in one process on the same device (``experiments.smaller_models``).

For each variant: parameter count and bytes (and the nonzero count: unstructured sparsity stores
and multiplies its zeros like any other weight), the forward pass over a batch (time per token and
tokens/s, the prompt-reading cost), and greedy decoding of one sequence with the KV cache (time
per new token: ``bench.inference.greedy_decode``, the call the inference benchmark times, whose
``--variant-runs`` gives these variants rows in its table). Every time is the median of ``steps``
rounds after compilation and ``warmup`` untimed calls, interleaved by ``bench.measure.interleaved_rounds``,
and each variant's ratio to the baseline comes from the same run. Quality is the caller's (it
needs the variant's own data and tokenizer).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

import models
from bench.inference import greedy_decode
from bench.measure import CpuContention, Workloads, interleaved_rounds


@dataclasses.dataclass
class Variant:
    name: str
    module: Any
    params: Any
    quality: dict = dataclasses.field(default_factory=dict)  # e.g. validation loss and perplexity


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """What the smaller-model variants are timed on: a forward pass and decoding, interleaved rounds."""

    batch_size: int = 8
    seq_len: int = 128
    prompt_len: int = 16
    new_tokens: int = 32
    steps: int = 7  # interleaved timed rounds
    warmup: int = 1


def _workloads(variant: Variant, spec: VariantSpec) -> Workloads:
    """The variant's forward pass over a batch and its greedy decode, compiled and warmed up."""
    module, params = variant.module, variant.params
    ids = np.random.default_rng(0).integers(0, module.config.vocab_size, (spec.batch_size, spec.seq_len))
    forward = jax.jit(lambda p, x: module.apply({"params": p}, x))
    return Workloads({"forward": lambda: jax.block_until_ready(forward(params, ids.astype(np.int32))),
                      "decode": greedy_decode(module, params, ids[:1, : spec.prompt_len], spec.new_tokens)},
                     warmup=1 + spec.warmup)


def compare(variants: list[Variant], spec: VariantSpec = VariantSpec()) -> list[dict]:
    """One row per variant, the first being the baseline, with ratios to it (below 1: smaller or
    faster), times from ``steps`` interleaved rounds of one forward pass and one decode each."""
    contenders = {str(i): _workloads(v, spec) for i, v in enumerate(variants)}
    load = CpuContention()  # other processes' CPU use while timed: the machine is shared
    load.start()
    interleaved_rounds(contenders, ["forward", "decode"], spec.steps)
    cores = load.stop()
    tokens = spec.batch_size * spec.seq_len
    rows = []
    for v, c in zip(variants, contenders.values()):
        leaves = jax.tree.leaves(v.params)
        times = c.result()["workloads"]
        forward_s, decode_s = times["forward"]["median_s"], times["decode"]["median_s"]
        rows.append({
            "variant": v.name,
            "params": models.count_params(v.params),
            "nonzero_params": int(sum(np.count_nonzero(np.asarray(x)) for x in leaves)),
            "param_bytes": int(sum(np.asarray(x).nbytes for x in leaves)),
            "forward_ms_per_token": 1e3 * forward_s / tokens,
            "forward_tokens_per_s": tokens / forward_s,
            "decode_ms_per_token": 1e3 * decode_s / spec.new_tokens,
            "decode_tokens_per_s": spec.new_tokens / decode_s,
            "load": cores,
            **v.quality,
        })
    base = rows[0]
    for row in rows:
        for key in ("param_bytes", "forward_ms_per_token", "decode_ms_per_token"):
            row[f"{key}_vs_baseline"] = row[key] / base[key]
        if "loss" in row and "loss" in base:
            row["loss_change"] = row["loss"] - base["loss"]
    return rows


def compare_train_steps(modules: list, spec: VariantSpec = VariantSpec(), learning_rate: float = 1e-3) -> list[float]:
    """Median train-step seconds (the loop's jitted AdamW step, language modelling, a random batch
    of ``batch_size`` x ``seq_len``) of each module, timed in ``steps`` interleaved rounds."""
    import optim
    from train import sharding
    from train.step import init_state, make_train_step
    from train.tasks import LanguageModeling

    mesh = sharding.make_mesh()
    rng = np.random.default_rng(0)
    contenders = {}
    for i, module in enumerate(modules):
        tx = optim.adamw(learning_rate)
        state, shardings = init_state(module, tx, jax.random.key(0), mesh)
        step = make_train_step(module, LanguageModeling, tx, jax.random.key(1), shardings, mesh, grad_accum=1)
        ids = rng.integers(0, module.config.vocab_size, (1, spec.batch_size, spec.seq_len + 1)).astype(np.int32)
        batch = {"inputs": ids[..., :-1], "targets": ids[..., 1:]}
        holder = {"state": state}

        def call(step=step, batch=batch, holder=holder):
            holder["state"], sums = step(holder["state"], batch)
            jax.block_until_ready(sums)

        contenders[str(i)] = Workloads({"step": call}, warmup=1 + spec.warmup)
    interleaved_rounds(contenders, ["step"], spec.steps)
    return [c.result()["workloads"]["step"]["median_s"] for c in contenders.values()]


def environment() -> dict:
    return {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__}
