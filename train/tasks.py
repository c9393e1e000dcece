"""Tasks: what a batch looks like and what loss is minimised. The loop knows nothing else.

The data modules (``train.data``: ``datasets`` behind them) are imported by the methods that
read data, so the losses import without the data stack (a GPU check, a benchmark).

A task provides
- ``load_corpus(source, split)``: the tokenised data it draws batches from,
- ``train_batches(corpus, ...)`` / ``eval_batches(corpus, ...)``: numpy batch iterators,
- ``model_config(config) -> config``: the model it trains, given the run's model config (a
  classifier wraps it),
- ``loss(module, variables, batch, rng, deterministic) -> (loss, (sums, model_state))``: the
  scalar to differentiate, additive statistics (sums over tokens or examples), and the model's
  non-parameter collections after the batch (batch statistics; ``{}`` for most models),
- ``summarize(sums) -> metrics``: turns summed statistics into reported metrics.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from models import adaptive_softmax
from models.classifier import ClassifierConfig
from models.layers import table_logits
from train.data.downloads import cache_dir


def check_fit(tokenizer, model_config, seq_len: int) -> None:
    """The tokenizer's ids must index the model's embeddings, and sequences must fit its context."""
    if tokenizer.vocab_size > model_config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model embeds only {model_config.vocab_size}; "
            f"use --set model.vocab_size={tokenizer.vocab_size} or a matching tokenizer"
        )
    context = model_config.n_positions
    if seq_len > context:
        raise ValueError(
            f"data.seq_len={seq_len} exceeds the model's context of {context} positions; lower data.seq_len"
        )


def apply_model(module, variables, *args, rng, deterministic: bool, **kwargs):
    """``module.apply`` with dropout keys -> ``(output, model_state)``: the non-parameter
    collections of ``variables``, updated by the batch in training (batch statistics), as they
    were otherwise."""
    state = {k: v for k, v in variables.items() if k != "params"}
    rngs = {"dropout": rng}
    if deterministic or not state:
        return module.apply(variables, *args, deterministic=deterministic, rngs=rngs, **kwargs), state
    return module.apply(variables, *args, deterministic=False, rngs=rngs, mutable=list(state), **kwargs)


def cross_entropy_sums(logits, targets, weights):
    """Summed token cross-entropy, token count and correct predictions, in fp32."""
    logits = logits.astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return {"nll": jnp.sum(nll * weights), "weight": jnp.sum(weights), "correct": jnp.sum(correct * weights)}


def chunked_cross_entropy_sums(hidden, table, targets, weights, chunk: int):
    """:func:`cross_entropy_sums` of the tied output layer ``hidden @ table.T``, over ``chunk``
    positions at a time: each chunk's logits are made, summed over and, in the backward pass,
    made again (``jax.checkpoint``), so the peak holds one chunk's [batch, chunk, vocab] logits."""
    length = hidden.shape[1]
    pad = -length % chunk
    widen = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
    split = lambda x: jnp.moveaxis(x.reshape(x.shape[0], -1, chunk, *x.shape[2:]), 1, 0)  # noqa: E731
    pieces = (split(widen(hidden)), split(widen(targets)), split(widen(weights)))  # padding has weight 0

    @jax.checkpoint
    def add(total, piece):
        h, t, w = piece
        sums = cross_entropy_sums(table_logits(h, table, h.dtype), t, w)
        return jax.tree.map(jnp.add, total, sums), None

    zero = {"nll": jnp.zeros((), jnp.float32), "weight": jnp.zeros((), jnp.float32), "correct": jnp.zeros((), jnp.float32)}
    return jax.lax.scan(add, zero, pieces)[0]


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
        from train import data
        if self.config.data.streaming and split == "train":
            return data.load_documents(source, split, self.config.data.text_field, streaming=True)
        return data.load_corpus(source, self.tokenizer, self.tokenizer_key, cache_dir() / "tokens", split=split,
                                text_field=self.config.data.text_field)

    def train_batches(self, corpus, per_host_batch: int, process_index: int, process_count: int):
        from train import data
        layout = dict(seed=self.config.seed, process_index=process_index, process_count=process_count)
        if isinstance(corpus, data.TokenizedCorpus):
            return data.PackedBatches(corpus, self.config.data.seq_len, per_host_batch, **layout)
        return data.StreamingPackedBatches(corpus, self.tokenizer, self.config.data.seq_len, per_host_batch,
                                           text_field=self.config.data.text_field, **layout)

    def eval_batches(self, corpus, per_host_batch: int, process_index: int, process_count: int):
        from train import data
        return data.eval_batches(
            corpus, self.config.data.seq_len, per_host_batch, process_index=process_index, process_count=process_count
        )

    @staticmethod
    def model_config(model_config):
        return model_config

    @staticmethod
    def loss(module, variables, batch, rng, deterministic: bool):
        weights = batch.get("weights", jnp.ones(batch["targets"].shape, jnp.float32))
        if getattr(module.config, "adaptive_cutoffs", ()):  # the target's log-probability alone
            hidden, state = apply_model(module, variables, batch["inputs"], rng=rng, deterministic=deterministic,
                                        return_hidden=True)
            nll, correct = adaptive_softmax.token_nll(module.config, variables["params"], hidden, batch["targets"])
            sums = {"nll": jnp.sum(nll * weights), "weight": jnp.sum(weights),
                    "correct": jnp.sum(correct.astype(jnp.float32) * weights)}
        elif getattr(module.config, "logits_chunk", 0):
            hidden, state = apply_model(module, variables, batch["inputs"], rng=rng, deterministic=deterministic,
                                        return_hidden=True)
            sums = chunked_cross_entropy_sums(hidden, variables["params"]["wte"]["embedding"], batch["targets"],
                                              weights, module.config.logits_chunk)
        else:
            logits, state = apply_model(module, variables, batch["inputs"], rng=rng, deterministic=deterministic)
            sums = cross_entropy_sums(logits, batch["targets"], weights)
        return sums["nll"] / jnp.maximum(sums["weight"], 1.0), (sums, state)

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


def pair_pretraining_loss(module, variables, batch, rng, deterministic: bool, objective: str | None):
    """Mean masked-LM loss plus mean NSP/SOP loss, their additive statistics, the model state.
    With ``objective`` None the loss is the masked LM's alone (the sentence-pair head, if any,
    is not used)."""
    out, state = apply_model(
        module, variables, batch["input_ids"], attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"], rng=rng, deterministic=deterministic,
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
    return loss, (sums, state)


class MaskedLMWithPairs:
    """BERT/ALBERT pretraining: masked LM plus next-sentence (``nsp``) or sentence-order (``sop``)
    prediction on ``[CLS] A [SEP] B [SEP]`` pairs (see ``train.data.sentence_pairs``); the loss is the
    sum of the two means, as in the papers. Without ``pair_loss`` (task ``mlm``) the inputs are the
    same pairs and the loss is the masked LM's alone: the ablation of the sentence-level objective."""

    def __init__(self, config, tokenizer, tokenizer_key: str, objective: str, pair_loss: bool = True):
        from train.data import sentence_pairs
        self.config, self.tokenizer, self.tokenizer_key, self.objective = config, tokenizer, tokenizer_key, objective
        self.pair_loss = pair_loss
        self.name = f"mlm_{objective}" if pair_loss else "mlm"
        self.encoder = sentence_pairs.PairEncoder(
            sentence_pairs.special_ids(tokenizer), max_len=config.data.seq_len, rate=config.task.mask_rate,
            word_start_table=sentence_pairs.word_start_table(tokenizer) if config.task.whole_word_masking else None,
            max_ngram=config.task.max_ngram,
        )

    def load_corpus(self, source, split: str):
        from train import data
        from train.data import sentence_pairs
        boundaries = sentence_pairs.SentenceBoundaries(self.tokenizer, self.encoder.specials["sep"])
        corpus = data.load_corpus(source, boundaries, self.tokenizer_key + ":sentences", cache_dir() / "tokens",
                                  split=split, text_field=self.config.data.text_field)
        return sentence_pairs.document_sentences(corpus)

    def train_batches(self, docs, per_host_batch: int, process_index: int, process_count: int):
        from train.data import sentence_pairs
        return sentence_pairs.SentencePairBatches(
            docs, self.encoder, batch_size=per_host_batch, objective=self.objective, seed=self.config.seed,
            process_index=process_index, process_count=process_count,
        )

    def eval_batches(self, docs, per_host_batch: int, process_index: int, process_count: int):
        from train.data import sentence_pairs
        return sentence_pairs.eval_pair_batches(
            docs, self.encoder, batch_size=per_host_batch, objective=self.objective, seed=self.config.seed,
            process_index=process_index, process_count=process_count,
        )

    @staticmethod
    def model_config(model_config):
        return model_config

    def loss(self, module, variables, batch, rng, deterministic: bool):
        return pair_pretraining_loss(module, variables, batch, rng, deterministic,
                                     self.objective if self.pair_loss else None)

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


def classification_metrics(confusion, labels) -> dict:
    """Accuracy, macro-F1 (the unweighted mean of the classes' F1) and per-class counts from a
    confusion matrix ``[true class, predicted class]``."""
    confusion = np.asarray(confusion, np.float64)
    total, correct = confusion.sum(), np.trace(confusion)
    per_class, f1s = {}, []
    for i, label in enumerate(labels):
        examples, predicted, hits = confusion[i].sum(), confusion[:, i].sum(), confusion[i, i]
        precision = hits / predicted if predicted else 0.0
        recall = hits / examples if examples else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s.append(f1)
        per_class[label] = {"examples": int(examples), "predicted": int(predicted), "correct": int(hits),
                            "precision": precision, "recall": recall, "f1": f1}
    return {"accuracy": correct / total if total else 0.0, "macro_f1": float(np.mean(f1s)),
            "examples": int(total), "per_class": per_class}


def classification_sums(logits, batch) -> dict:
    """Summed cross-entropy, example count, confusion matrix ``[true, predicted]`` and real tokens
    of a batch of class logits, each example counted by its weight, in fp32."""
    logits, weights = logits.astype(jnp.float32), batch["weights"]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]) * weights
    classes = logits.shape[-1]
    truth = jax.nn.one_hot(batch["labels"], classes) * weights[:, None]
    confusion = truth.T @ jax.nn.one_hot(jnp.argmax(logits, -1), classes)
    return {"nll": nll.sum(), "weight": weights.sum(), "confusion": confusion,
            "tokens": (batch["attention_mask"] * weights[:, None]).sum()}


class Classification:
    """Sequence classification (task ``classify``): labelled rows (``text_field``, ``label_field``)
    framed for the model family (see ``train.data.labelled``), a classifier on the run's model
    (``models.ClassifierConfig`` with ``config.task.classifier``), mean cross-entropy over
    examples; metrics accuracy, macro-F1 and per-class counts.

    The class names are the sorted labels of the training split, or those of the classifier
    being evaluated (``labels``); every other split must hold each of them and no other.
    """

    name = "classify"

    def __init__(self, config, tokenizer, tokenizer_key: str, labels: tuple[str, ...] | None = None):
        self.config, self.tokenizer, self.tokenizer_key = config, tokenizer, tokenizer_key
        family = config.model.family
        self.framing = "encoder" if family in ("bert", "albert") else "decoder"
        self.labels = labels

    def load_corpus(self, source, split: str):
        from train.data import labelled
        c = self.config.data
        examples = labelled.load_labelled(
            source, split, self.tokenizer, self.tokenizer_key, cache_dir() / "tokens", seq_len=c.seq_len,
            framing=self.framing, text_field=c.text_field, label_field=c.label_field,
        )
        if self.labels is None:
            if split != "train":
                raise ValueError(f"the class names come from the training split; load it before the {split} split")
            classes = examples.classes()
            if len(classes) < 2:
                raise ValueError(
                    f"label column {c.label_field!r} of {source!r} has one class ({classes[0]!r}); a classifier needs "
                    "at least two: check data.label_field and the data"
                )
            self.labels = classes
        return examples, labelled.check_classes(examples, self.labels, split, c.label_field)

    def model_config(self, model_config):
        if self.labels is None:
            raise ValueError("the classifier's classes are unknown until the training split is loaded")
        return ClassifierConfig.on(model_config, self.labels, self.config.task.classifier)

    def train_batches(self, corpus, per_host_batch: int, process_index: int, process_count: int):
        from train.data import labelled
        return labelled.ExampleBatches(*corpus, per_host_batch, seed=self.config.seed, process_index=process_index,
                                       process_count=process_count)

    def eval_batches(self, corpus, per_host_batch: int, process_index: int, process_count: int):
        from train.data import labelled
        return labelled.eval_example_batches(*corpus, per_host_batch, process_index=process_index,
                                             process_count=process_count)

    def loss(self, module, variables, batch, rng, deterministic: bool):
        logits, state = apply_model(module, variables, batch["input_ids"], batch["attention_mask"], rng=rng,
                                    deterministic=deterministic)
        sums = classification_sums(logits, batch)
        return sums["nll"] / jnp.maximum(sums["weight"], 1.0), (sums, state)

    def summarize(self, sums) -> dict:
        weight = max(float(sums["weight"]), 1.0)
        metrics = classification_metrics(sums["confusion"], self.labels)
        return {"loss": float(sums["nll"]) / weight, **metrics, "tokens": int(sums["tokens"])}


# The task of each model family, for checkpoints that do not say (HF folders).
DEFAULT_TASKS = {"gpt": "lm", "bert": "mlm_nsp", "albert": "mlm_sop", "classifier": "classify"}

# The tasks that build batches from data; train.task_registry adds distillation on top of them.
TASKS = {
    "lm": LanguageModeling,
    "classify": Classification,
    "mlm_nsp": functools.partial(MaskedLMWithPairs, objective="nsp"),
    "mlm_sop": functools.partial(MaskedLMWithPairs, objective="sop"),
    "mlm": functools.partial(MaskedLMWithPairs, objective="nsp", pair_loss=False),
}
