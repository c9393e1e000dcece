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


def pair_pretraining_loss(module, params, batch, rng, deterministic: bool, objective: str | None):
    """Mean masked-LM loss plus mean NSP/SOP loss, and their additive statistics. With ``objective``
    None the loss is the masked LM's alone (the sentence-pair head, if any, is not used)."""
    out = module.apply(
        {"params": params}, batch["input_ids"], attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"], deterministic=deterministic, rngs={"dropout": rng},
    )
    needed = ["mlm_logits"] + ([f"{objective}_logits"] if objective else [])
    if any(key not in out for key in needed):
        heads = "MLM" + (f" and {objective.upper()}" if objective else "")
        raise ValueError(f"this pretraining task needs a model with {heads} heads; this one gives {sorted(out)}")
    mlm = cross_entropy_sums(out["mlm_logits"], batch["mlm_labels"], batch["mlm_weights"])
    sums = {"mlm_nll": mlm["nll"], "mlm_weight": mlm["weight"], "mlm_correct": mlm["correct"]}
    loss = mlm["nll"] / jnp.maximum(mlm["weight"], 1.0)
    if objective:
        pair = cross_entropy_sums(out[f"{objective}_logits"], batch["pair_labels"], batch["pair_weights"])
        sums.update(pair_nll=pair["nll"], pair_weight=pair["weight"], pair_correct=pair["correct"])
        loss = loss + pair["nll"] / jnp.maximum(pair["weight"], 1.0)
    return loss, sums


class MaskedLMWithPairs:
    """BERT/ALBERT pretraining: masked LM plus next-sentence (``nsp``) or sentence-order (``sop``)
    prediction on ``[CLS] A [SEP] B [SEP]`` pairs (see ``train.data.sentence_pairs``); the loss is the
    sum of the two means, as in the papers. Without ``pair_loss`` (task ``mlm``) the inputs are the
    same pairs and the loss is the masked LM's alone: the ablation of the sentence-level objective."""

    def __init__(self, config, tokenizer, tokenizer_key: str, objective: str, pair_loss: bool = True):
        self.config, self.tokenizer, self.tokenizer_key, self.objective = config, tokenizer, tokenizer_key, objective
        self.pair_loss = pair_loss
        self.name = f"mlm_{objective}" if pair_loss else "mlm"
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
        return pair_pretraining_loss(module, params, batch, rng, deterministic, self.objective if self.pair_loss else None)

    def summarize(self, sums) -> dict:
        s = jax.tree.map(float, sums)
        mlm_loss = s["mlm_nll"] / max(s["mlm_weight"], 1.0)
        metrics = {"loss": mlm_loss, "mlm_loss": mlm_loss, "mlm_accuracy": s["mlm_correct"] / max(s["mlm_weight"], 1.0),
                   "tokens": int(s["mlm_weight"])}
        if "pair_nll" in s:
            pair_loss = s["pair_nll"] / max(s["pair_weight"], 1.0)
            metrics.update({"loss": mlm_loss + pair_loss, f"{self.objective}_loss": pair_loss,
                            f"{self.objective}_accuracy": s["pair_correct"] / max(s["pair_weight"], 1.0),
                            "pairs": int(s["pair_weight"])})
        return metrics


TASKS = {
    "lm": LanguageModeling,
    "mlm_nsp": functools.partial(MaskedLMWithPairs, objective="nsp"),
    "mlm_sop": functools.partial(MaskedLMWithPairs, objective="sop"),
    "mlm": functools.partial(MaskedLMWithPairs, objective="nsp", pair_loss=False),
}


def make_task(config, tokenizer, tokenizer_key: str):
    if config.task not in TASKS:
        raise ValueError(f"unknown task {config.task!r}; choose one of {sorted(TASKS)}")
    return TASKS[config.task](config, tokenizer, tokenizer_key)
