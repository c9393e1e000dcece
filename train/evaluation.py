"""Evaluation of parameters on held-out data: ours from a run folder, or an HF checkpoint."""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from models.classifier import ClassifierConfig
from models.quantize import param_bytes, prepare
from train import sharding
from train.checkpoint import load_variables_for_eval
from train.config import TrainConfig
from train.data.tokenizers import load_tokenizer, tokenizer_id
from train.step import make_eval_step, variables_sharding
from train.task_registry import make_task
from train.tasks import DEFAULT_TASKS, check_fit


def evaluate(eval_step, variables, task, batches, mesh, max_batches: int | None = None) -> dict:
    """Sum an eval step's statistics over ``batches`` and summarise them."""
    totals = None
    in_sharding = sharding.batch_sharding(mesh)
    for i, local in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        sums = eval_step(variables, sharding.global_batch(local, in_sharding))
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    if totals is None:
        raise ValueError("the evaluation data gave no batches")
    return task.summarize(totals)


def unigram_baseline(train_tokens, eval_tokens, vocab_size: int) -> dict:
    """Cross-entropy of a unigram model (train counts, add-one smoothed) on the eval tokens:
    the floor a language model must beat to have learnt anything about context."""
    counts = np.bincount(np.asarray(train_tokens), minlength=vocab_size).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    loss = float(-log_p[np.asarray(eval_tokens)].mean())
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": int(len(eval_tokens))}





def evaluate_checkpoint(checkpoint, data_source, *, tokenizer=None, task=None, seq_len=None, batch_size=8,
                        text_field="text", max_batches=None, step=None, split="validation",
                        unigram_from=None, dtype=None, quantize=None) -> dict:
    """Evaluate a checkpoint on a corpus; returns the metrics, the token count and the model config.

    ``tokenizer`` defaults to the one the run was trained with (an HF folder needs one given);
    ``task`` to the run's, else the family's pretraining task (``DEFAULT_TASKS``);
    ``seq_len`` to the run's, else the model's context. ``unigram_from`` (training data) adds
    the unigram baseline on the same tokens. A classifier reports accuracy, macro-F1 and
    per-class counts on ``data_source``'s labelled rows (the run's ``label_field``). ``dtype``
    (parameters and compute) and ``quantize`` (``"int8"`` weights) evaluate a cheaper variant
    (``models.quantize.prepare``).
    """
    module, model_config, variables, run = load_variables_for_eval(checkpoint, step)
    tokenizer = tokenizer or run.get("tokenizer")
    if not tokenizer:
        raise ValueError("no tokenizer: pass one (a .model file, vocab.txt, or a GPT-2 BPE folder)")
    is_classifier = isinstance(model_config, ClassifierConfig)
    body = model_config.body if is_classifier else model_config
    seq_len = seq_len or run.get("seq_len") or body.n_positions
    tok = load_tokenizer(tokenizer)
    check_fit(tok, body, seq_len)
    # The run's own settings (task, masking, seed, classifier) where it has them.
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = {k: v for k, v in run.items() if k in fields and k != "init_from"}
    task = task or settings.get("task") or DEFAULT_TASKS[model_config.family]
    if task != "distill" and (task == "classify") != is_classifier:  # a distilled run's base task fits its model
        raise ValueError(f"task {task!r} does not fit {checkpoint}, which holds a {type(model_config).__name__}: "
                         f"classify goes with classifier checkpoints; evaluate this one with task "
                         f"{DEFAULT_TASKS[model_config.family]!r}")
    settings.update(task=task, seq_len=seq_len, batch_size=batch_size, grad_accum=1,
                    warmup_steps=0, tokenizer=str(tokenizer), text_field=text_field)
    config = TrainConfig(**settings)
    task_obj = make_task(config, tok, tokenizer_id(tokenizer))
    if is_classifier:
        task_obj.labels = model_config.labels
    corpus = task_obj.load_corpus(data_source, split)
    mesh = sharding.make_mesh()
    sharding.check_batch(batch_size, 1, dict(mesh.shape))
    index, count = sharding.batch_split(mesh)
    shardings = variables_sharding(module, variables, mesh)
    variables = jax.device_put(variables, shardings)
    module, params = prepare(module, variables["params"], dtype, quantize)
    variables = {**variables, "params": params}
    if quantize:  # int8 leaves have their own layout: they stay where quantization put them
        shardings = None
    metrics = evaluate(make_eval_step(module, task_obj, shardings, mesh), variables, task_obj,
                       task_obj.eval_batches(corpus, batch_size // count, index, count), mesh, max_batches)
    result = {**metrics, "checkpoint": str(checkpoint), "step": run.get("step"), "seq_len": seq_len,
              "dtype": (module.config.body if is_classifier else module.config).dtype, "quantize": quantize, "param_bytes": param_bytes(params)}
    if unigram_from is not None and max_batches is None:
        if task_obj.name != "lm":
            raise ValueError("the unigram baseline applies to the language-modelling task only")
        result["unigram_baseline"] = unigram_baseline(task_obj.load_corpus(unigram_from, "train").tokens,
                                                      corpus.tokens, tok.vocab_size)
    return {**result, "model_config": dataclasses.asdict(model_config)}
