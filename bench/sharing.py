"""Does ALBERT's cross-layer parameter sharing change training or inference time?

Times, in one process and on the same device, the pretraining step (masked LM + sentence-pair
loss, AdamW, the loop's jitted step) and the inference forward pass of encoders with the same
depth, hidden size and embedding size:

- ``bert``: BERT (its embedding size is the hidden size);
- ``albert-unshared``: ALBERT with one layer group per layer (no sharing), E = H;
- ``albert-shared``: ALBERT with one group shared by every layer, E = H;
- ``albert-shared-factorised``: the same with ALBERT's factorised embeddings (E < H), for scale.

Sharing divides the parameter count by the depth but not the arithmetic: every layer still
runs its matrices, so the FLOPs per token stay the same; what changes is the memory holding
parameters, gradients and optimizer state, and the optimizer's own work.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
import types

import jax
import numpy as np

import models
import optim
from train import sharding
from train.step import init_state, make_train_step
from train.tasks import pair_pretraining_loss


@dataclasses.dataclass(frozen=True)
class SharingSpec:
    num_hidden_layers: int = 6
    hidden_size: int = 512
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    factorised_embedding_size: int = 128
    vocab_size: int = 30000
    seq_len: int = 128
    batch_size: int = 8
    steps: int = 5
    warmup: int = 1


def variants(spec: SharingSpec) -> dict:
    """(preset, overrides) of each contender; dropout off in all (ALBERT v2 has none)."""
    shape = dict(num_hidden_layers=spec.num_hidden_layers, hidden_size=spec.hidden_size,
                 num_attention_heads=spec.num_attention_heads, intermediate_size=spec.intermediate_size,
                 vocab_size=spec.vocab_size, max_position_embeddings=max(512, spec.seq_len),
                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return {
        "bert": ("bert-base-uncased", shape),
        "albert-unshared": ("albert-base-v2", dict(shape, embedding_size=spec.hidden_size,
                                                   num_hidden_groups=spec.num_hidden_layers)),
        "albert-shared": ("albert-base-v2", dict(shape, embedding_size=spec.hidden_size, num_hidden_groups=1)),
        "albert-shared-factorised": ("albert-base-v2", dict(shape, embedding_size=spec.factorised_embedding_size,
                                                            num_hidden_groups=1)),
    }


def _median_time(fn, steps: int, warmup: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), compile_s


def random_batch(spec: SharingSpec, rng: np.random.Generator) -> dict:
    b, t = spec.batch_size, spec.seq_len
    weights = (rng.random((b, t)) < 0.15).astype(np.float32)
    return {
        "input_ids": rng.integers(5, spec.vocab_size, (b, t)).astype(np.int32),
        "token_type_ids": (np.arange(t)[None, :] >= t // 2).repeat(b, 0).astype(np.int32),
        "attention_mask": np.ones((b, t), np.int32),
        "mlm_labels": rng.integers(5, spec.vocab_size, (b, t)).astype(np.int32),
        "mlm_weights": weights,
        "pair_labels": rng.integers(0, 2, (b,)).astype(np.int32),
        "pair_weights": np.ones((b,), np.float32),
    }


def bench_variant(name: str, preset: str, overrides: dict, spec: SharingSpec) -> dict:
    module, config = models.create(preset, **overrides)
    objective = "sop" if config.family == "albert" else "nsp"
    task = types.SimpleNamespace(loss=functools.partial(pair_pretraining_loss, objective=objective))
    mesh = sharding.make_mesh()
    tx = optim.adamw(1e-4, weight_decay=0.01)
    state, shardings = init_state(module, tx, jax.random.PRNGKey(0), mesh)
    step = make_train_step(module, task, tx, jax.random.PRNGKey(1), shardings, mesh, grad_accum=1)
    batch = random_batch(spec, np.random.default_rng(0))
    train_batch = sharding.global_batch(jax.tree.map(lambda x: x[None], batch), sharding.batch_sharding(mesh, 1))
    holder = {"state": state}

    def train_once():
        holder["state"], sums = step(holder["state"], train_batch)
        return sums

    train_s, train_compile = _median_time(train_once, spec.steps, spec.warmup)
    forward = jax.jit(lambda p, x: module.apply({"params": p}, x["input_ids"], attention_mask=x["attention_mask"],
                                                token_type_ids=x["token_type_ids"])["hidden"])
    infer_s, infer_compile = _median_time(lambda: forward(holder["state"].params, batch), spec.steps, spec.warmup)
    tokens = spec.batch_size * spec.seq_len
    return {
        "variant": name,
        "params": models.count_params(holder["state"].params),
        "embedding_size": getattr(config, "embedding_size", config.hidden_size),
        "layer_groups": getattr(config, "num_hidden_groups", config.num_hidden_layers),
        "train_step_s": train_s,
        "train_tokens_per_s": tokens / train_s,
        "inference_s": infer_s,
        "inference_tokens_per_s": tokens / infer_s,
        "compile_s": {"train": train_compile, "inference": infer_compile},
    }


def compare_sharing(spec: SharingSpec) -> dict:
    rows = [bench_variant(name, preset, overrides, spec) for name, (preset, overrides) in variants(spec).items()]
    base = rows[0]
    for row in rows:
        row["train_step_vs_bert"] = row["train_step_s"] / base["train_step_s"]
        row["inference_vs_bert"] = row["inference_s"] / base["inference_s"]
    return {
        "mode": "sharing",
        "spec": dataclasses.asdict(spec),
        "device": str(jax.devices()[0].device_kind),
        "dropout": "off in all variants",
        "rows": rows,
    }
