"""Tasks: what a batch looks like and what loss is minimised. The loop knows nothing else.

A task provides
- ``train_batches(corpus_spec, ...)`` / ``eval_batches(...)``: numpy batch iterators,
- ``loss(module, params, batch, rng, deterministic) -> (loss, sums)``: the scalar to
  differentiate and additive statistics (sums over tokens or examples),
- ``summarize(sums) -> metrics``: turns summed statistics into reported metrics.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from train import data


def cross_entropy_sums(logits, targets, weights):
    """Summed token cross-entropy, token count and correct predictions, in fp32."""
    logits = logits.astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return {"nll": jnp.sum(nll * weights), "weight": jnp.sum(weights), "correct": jnp.sum(correct * weights)}


class LanguageModeling:
    """Causal LM on packed blocks: predict token t+1 from tokens <= t."""

    name = "lm"

    def __init__(self, config, tokenizer):
        self.config = config
        self.tokenizer = tokenizer

    def train_batches(self, corpus, per_host_batch: int, process_index: int, process_count: int):
        return data.PackedBatches(
            corpus, self.config.seq_len, per_host_batch, seed=self.config.seed,
            process_index=process_index, process_count=process_count,
        )

    def eval_batches(self, corpus, per_host_batch: int, process_index: int, process_count: int):
        return data.eval_batches(
            corpus, self.config.seq_len, per_host_batch, process_index=process_index, process_count=process_count
        )

    @staticmethod
    def loss(module, params, batch, rng, deterministic: bool):
        logits = module.apply(
            {"params": params}, batch["inputs"], deterministic=deterministic, rngs={"dropout": rng}
        )
        weights = batch.get("weights", jnp.ones(batch["targets"].shape, jnp.float32))
        sums = cross_entropy_sums(logits, batch["targets"], weights)
        return sums["nll"] / jnp.maximum(sums["weight"], 1.0), sums

    @staticmethod
    def summarize(sums) -> dict:
        sums = jax.tree.map(float, sums)
        loss = sums["nll"] / max(sums["weight"], 1.0)
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 700.0)),
            "accuracy": sums["correct"] / max(sums["weight"], 1.0),
            "tokens": int(sums["weight"]),
        }


TASKS = {LanguageModeling.name: LanguageModeling}


def make_task(config, tokenizer):
    if config.task not in TASKS:
        raise ValueError(f"unknown task {config.task!r}; choose one of {sorted(TASKS)}")
    return TASKS[config.task](config, tokenizer)
