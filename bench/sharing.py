"""Does ALBERT's cross-layer parameter sharing change training or inference time?

Times, in one process and on the same device, the pretraining step (masked LM + sentence-pair
loss, AdamW, the loop's jitted step) and the inference forward pass of encoders with the same
depth, hidden size and embedding size:

- ``bert``: BERT (its embedding size is the hidden size);
- ``albert-unshared``: ALBERT with one layer group per layer (no sharing), E = H;
- ``albert-shared``: ALBERT with one group shared by every layer, E = H;
- ``albert-unshared-factorised`` / ``albert-shared-factorised``: ALBERT as released, factorised
  embeddings (E < H), with one group per layer or one group for all: the pair that differs only
  in ``n_groups``.

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
    n_layer: int = 6
    d_model: int = 512
    n_head: int = 8
    d_ff: int = 2048
    d_embed: int = 128  # the factorised variants' embedding width
    vocab_size: int = 30000
    seq_len: int = 128
    batch_size: int = 8
    steps: int = 5
    warmup: int = 1


def variants(spec: SharingSpec) -> dict:
    """(preset, overrides) of each contender; dropout off in all (ALBERT v2 has none). The first is
    the baseline of the ratios."""
    shape = dict(n_layer=spec.n_layer, d_model=spec.d_model, n_head=spec.n_head, d_ff=spec.d_ff,
                 vocab_size=spec.vocab_size, n_positions=max(512, spec.seq_len),
                 embed_dropout=0.0, attn_dropout=0.0, resid_dropout=0.0)
    return {
        "bert": ("bert-base-uncased", shape),
        "albert-unshared": ("albert-base-v2", dict(shape, d_embed=spec.d_model, n_groups=spec.n_layer)),
        "albert-shared": ("albert-base-v2", dict(shape, d_embed=spec.d_model, n_groups=1)),
        "albert-unshared-factorised": ("albert-base-v2", dict(shape, d_embed=spec.d_embed, n_groups=spec.n_layer)),
        "albert-shared-factorised": ("albert-base-v2", dict(shape, d_embed=spec.d_embed, n_groups=1)),
    }


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


def prepare_variant(preset: str, overrides: dict, spec: SharingSpec) -> dict:
    """A variant's compiled train step and inference forward pass, each a call that blocks on its
    result, and what the result reports about it."""
    module, config = models.create(preset, **overrides)
    objective = "sop" if config.family == "albert" else "nsp"
    task = types.SimpleNamespace(loss=functools.partial(pair_pretraining_loss, objective=objective))
    mesh = sharding.make_mesh()
    tx = optim.adamw(1e-4, weight_decay=0.01)
    state, shardings = init_state(module, tx, jax.random.PRNGKey(0), mesh)
    step = make_train_step(module, task, tx, jax.random.PRNGKey(1), shardings, mesh, grad_accum=1)
    batch = random_batch(spec, np.random.default_rng(0))
    train_batch = sharding.global_batch(jax.tree.map(lambda x: x[None], batch), sharding.batch_sharding(mesh, 1))
    forward = jax.jit(lambda p, x: module.apply({"params": p}, x["input_ids"], attention_mask=x["attention_mask"],
                                                token_type_ids=x["token_type_ids"])["hidden"])
    holder = {"state": state}

    def train_once():
        holder["state"], sums = step(holder["state"], train_batch)
        jax.block_until_ready(holder["state"])

    def infer_once():
        jax.block_until_ready(forward(holder["state"].params, batch))

    compile_s = {}
    for name, call in (("train", train_once), ("inference", infer_once)):
        t0 = time.perf_counter()
        call()
        compile_s[name] = time.perf_counter() - t0
        for _ in range(spec.warmup):
            call()
    return {
        "calls": {"train": train_once, "inference": infer_once},
        "info": {
            "params": models.count_params(holder["state"].params),
            "embedding_size": config.d_embed,
            "layer_groups": getattr(config, "n_groups", config.n_layer),
            "compile_s": compile_s,
        },
    }


def attention_flops_fraction(spec: SharingSpec) -> float:
    """Attention's share of the model FLOPs per token in one layer: ``12 d seq`` (scores and
    weighted sum, forward and backward) against ``6 (4 d^2 + 2 d d_ff)`` for its matrices."""
    d = spec.d_model
    attention = 12 * d * spec.seq_len
    return attention / (attention + 6 * (4 * d * d + 2 * d * spec.d_ff))


def compare_sharing(spec: SharingSpec) -> dict:
    """Every variant compiled and warmed up first, then timed in ``steps`` interleaved rounds (one
    train step and one forward pass of each per round, the lead rotating), so a change in the
    machine's speed hits every variant alike; medians over rounds."""
    prepared = {name: prepare_variant(preset, overrides, spec) for name, (preset, overrides) in variants(spec).items()}
    names = list(prepared)
    times = {name: {"train": [], "inference": []} for name in names}
    for r in range(spec.steps):
        for name in names[r % len(names):] + names[: r % len(names)]:
            for kind, call in prepared[name]["calls"].items():
                t0 = time.perf_counter()
                call()
                times[name][kind].append(time.perf_counter() - t0)
    tokens = spec.batch_size * spec.seq_len
    rows = []
    for name in names:
        train_s, infer_s = (statistics.median(times[name][k]) for k in ("train", "inference"))
        rows.append({"variant": name, **prepared[name]["info"], "train_step_s": train_s,
                     "train_tokens_per_s": tokens / train_s, "inference_s": infer_s,
                     "inference_tokens_per_s": tokens / infer_s})
    base = rows[0]
    for row in rows:
        row["train_step_vs_bert"] = row["train_step_s"] / base["train_step_s"]
        row["inference_vs_bert"] = row["inference_s"] / base["inference_s"]
    return {
        "mode": "sharing",
        "spec": dataclasses.asdict(spec),
        "device": str(jax.devices()[0].device_kind),
        "dropout": "off in all variants",
        "attention_flops_fraction": attention_flops_fraction(spec),
        "rows": rows,
    }
