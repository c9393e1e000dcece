"""Tasks: what a batch looks like and what loss is minimised. The loop knows nothing else.

A task provides
- ``load_corpus(source, split)``: the tokenised data it draws batches from,
- ``train_batches(corpus, ...)`` / ``eval_batches(corpus, ...)``: numpy batch iterators,
- ``loss(module, params, batch, rng, deterministic) -> (loss, sums)``: the scalar to
  differentiate and additive statistics (sums over tokens or examples),
- ``summarize(sums) -> metrics``: turns summed statistics into reported metrics.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import optax

from models import adaptive_softmax
from train import data
from train.data import sentence_pairs
from train.data.downloads import cache_dir


def context_length(model_config) -> int:
    for name in ("n_positions", "max_position_embeddings"):
        if hasattr(model_config, name):
            return getattr(model_config, name)
    raise TypeError(f"{type(model_config).__name__} has no context length field")


def check_fit(tokenizer, model_config, seq_len: int) -> None:
    """The tokenizer's ids must index the model's embeddings, and sequences must fit its context."""
    if tokenizer.vocab_size > model_config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model embeds only {model_config.vocab_size}; "
            f"set model_overrides.vocab_size={tokenizer.vocab_size} or use a matching tokenizer"
        )
    context = context_length(model_config)
    if seq_len > context:
        raise ValueError(
            f"seq_len={seq_len} exceeds the model's context of {context} positions; lower seq_len or raise the context"
        )


def cross_entropy_sums(logits, targets, weights):
    """Summed token cross-entropy, token count and correct predictions, in fp32."""
    logits = logits.astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return {"nll": jnp.sum(nll * weights), "weight": jnp.sum(weights), "correct": jnp.sum(correct * weights)}


class LanguageModeling:
    """Causal LM on packed blocks: predict token t+1 from tokens <= t."""

    name = "lm"

    def __init__(self, config, tokenizer, tokenizer_key: str):
        self.config = config
        self.tokenizer = tokenizer
        self.tokenizer_key = tokenizer_key

    def load_corpus(self, source, split: str):
        """Tokenised and cached up front; with ``config.streaming`` the training split is instead
        read as an ``IterableDataset`` and tokenised on the fly (hub-scale corpora)."""
        if self.config.streaming and split == "train":
            return data.load_documents(source, split, self.config.text_field, streaming=True)
        return data.load_corpus(source, self.tokenizer, self.tokenizer_key, cache_dir() / "tokens", split=split,
                                text_field=self.config.text_field)

    def train_batches(self, corpus, per_host_batch: int, process_index: int, process_count: int):
        layout = dict(seed=self.config.seed, process_index=process_index, process_count=process_count)
        if isinstance(corpus, data.TokenizedCorpus):
            return data.PackedBatches(corpus, self.config.seq_len, per_host_batch, **layout)
        return data.StreamingPackedBatches(corpus, self.tokenizer, self.config.seq_len, per_host_batch,
                                           text_field=self.config.text_field, **layout)

    def eval_batches(self, corpus, per_host_batch: int, process_index: int, process_count: int):
        return data.eval_batches(
            corpus, self.config.seq_len, per_host_batch, process_index=process_index, process_count=process_count
        )

    @staticmethod
    def loss(module, params, batch, rng, deterministic: bool):
        weights = batch.get("weights", jnp.ones(batch["targets"].shape, jnp.float32))
        if getattr(module.config, "adaptive_cutoffs", ()):  # the target's log-probability alone
            hidden = module.apply({"params": params}, batch["inputs"], deterministic=deterministic,
                                  rngs={"dropout": rng}, return_hidden=True)
            nll, correct = adaptive_softmax.token_nll(module.config, params, hidden, batch["targets"])
            sums = {"nll": jnp.sum(nll * weights), "weight": jnp.sum(weights),
                    "correct": jnp.sum(correct.astype(jnp.float32) * weights)}
        else:
            logits = module.apply(
                {"params": params}, batch["inputs"], deterministic=deterministic, rngs={"dropout": rng}
            )
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


def pair_pretraining_loss(module, params, batch, rng, deterministic: bool, objective: str):
    """Mean masked-LM loss plus mean NSP/SOP loss, and their additive statistics."""
    out = module.apply(
        {"params": params}, batch["input_ids"], attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"], deterministic=deterministic, rngs={"dropout": rng},
    )
    key = f"{objective}_logits"
    if "mlm_logits" not in out or key not in out:
        raise ValueError(f"masked-LM + {objective.upper()} pretraining needs a model with MLM and "
                         f"{objective.upper()} heads; this one gives {sorted(out)}")
    mlm = cross_entropy_sums(out["mlm_logits"], batch["mlm_labels"], batch["mlm_weights"])
    pair = cross_entropy_sums(out[key], batch["pair_labels"], batch["pair_weights"])
    sums = {"mlm_nll": mlm["nll"], "mlm_weight": mlm["weight"], "mlm_correct": mlm["correct"],
            "pair_nll": pair["nll"], "pair_weight": pair["weight"], "pair_correct": pair["correct"]}
    loss = mlm["nll"] / jnp.maximum(mlm["weight"], 1.0) + pair["nll"] / jnp.maximum(pair["weight"], 1.0)
    return loss, sums


class MaskedLMWithPairs:
    """BERT/ALBERT pretraining: masked LM plus next-sentence (``nsp``) or sentence-order (``sop``)
    prediction on ``[CLS] A [SEP] B [SEP]`` pairs (see ``train.data.sentence_pairs``); the loss is the
    sum of the two means, as in the papers."""

    def __init__(self, config, tokenizer, tokenizer_key: str, objective: str):
        self.config, self.tokenizer, self.tokenizer_key, self.objective = config, tokenizer, tokenizer_key, objective
        self.name = f"mlm_{objective}"
        self.encoder = sentence_pairs.PairEncoder(
            sentence_pairs.special_ids(tokenizer), max_len=config.seq_len, rate=config.mask_rate,
            word_start_table=sentence_pairs.word_start_table(tokenizer) if config.whole_word_masking else None,
            max_ngram=config.max_ngram,
        )

    def load_corpus(self, source, split: str):
        boundaries = sentence_pairs.SentenceBoundaries(self.tokenizer, self.encoder.specials["sep"])
        corpus = data.load_corpus(source, boundaries, self.tokenizer_key + ":sentences", cache_dir() / "tokens",
                                  split=split, text_field=self.config.text_field)
        return sentence_pairs.document_sentences(corpus)

    def train_batches(self, docs, per_host_batch: int, process_index: int, process_count: int):
        return sentence_pairs.SentencePairBatches(
            docs, self.encoder, batch_size=per_host_batch, objective=self.objective, seed=self.config.seed,
            process_index=process_index, process_count=process_count,
        )

    def eval_batches(self, docs, per_host_batch: int, process_index: int, process_count: int):
        return sentence_pairs.eval_pair_batches(
            docs, self.encoder, batch_size=per_host_batch, objective=self.objective, seed=self.config.seed,
            process_index=process_index, process_count=process_count,
        )

    def loss(self, module, params, batch, rng, deterministic: bool):
        return pair_pretraining_loss(module, params, batch, rng, deterministic, self.objective)

    def summarize(self, sums) -> dict:
        s = jax.tree.map(float, sums)
        mlm_loss = s["mlm_nll"] / max(s["mlm_weight"], 1.0)
        pair_loss = s["pair_nll"] / max(s["pair_weight"], 1.0)
        return {
            "loss": mlm_loss + pair_loss,
            "mlm_loss": mlm_loss,
            "mlm_accuracy": s["mlm_correct"] / max(s["mlm_weight"], 1.0),
            f"{self.objective}_loss": pair_loss,
            f"{self.objective}_accuracy": s["pair_correct"] / max(s["pair_weight"], 1.0),
            "tokens": int(s["mlm_weight"]),
            "pairs": int(s["pair_weight"]),
        }


def _distillation(config, tokenizer, tokenizer_key: str):
    from train.distill import Distillation  # it builds the teacher's task from this module

    return Distillation(config, tokenizer, tokenizer_key)


TASKS = {
    "lm": LanguageModeling,
    "mlm_nsp": functools.partial(MaskedLMWithPairs, objective="nsp"),
    "mlm_sop": functools.partial(MaskedLMWithPairs, objective="sop"),
    "distill": _distillation,
}


def make_task(config, tokenizer, tokenizer_key: str):
    if config.task not in TASKS:
        raise ValueError(f"unknown task {config.task!r}; choose one of {sorted(TASKS)}")
    return TASKS[config.task](config, tokenizer, tokenizer_key)
