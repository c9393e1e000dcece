"""Using a checkpoint (ours from a run folder, or a Hugging Face folder): evaluation on held-out
data, and generation."""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from models.classifier import ClassifierConfig
from models.generation import check_options, sample
from models.gpt import GPTConfig
from models.quantize import param_bytes, prepare
from models.speculative import speculative_sample
from train import sharding
from train.checkpoint import load_for_eval, load_variables_for_eval, run_config_for
from train.config import TASK_NAMES
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





def evaluate_checkpoint(checkpoint, data_source, *, tokenizer=None, task=None, step=None, split="validation",
                        unigram_from=None, dtype=None, quantize=None, overrides: dict | None = None) -> dict:
    """Evaluate a checkpoint on a corpus; returns the metrics, the token count and the model config.

    The run's own config (task, masking, fields, classifier) is the base, with ``overrides``
    (dotted paths, e.g. ``{"data.text_field": "body", "data.batch_size": 32, "log.eval_max_batches":
    10}``); a Hugging Face folder has its family's.
    ``tokenizer`` defaults to the run's (a Hugging Face folder's own files); ``task`` to the
    run's, else the family's pretraining task (``DEFAULT_TASKS``); the sequence length
    (``data.seq_len``) to the run's, else the model's context. ``unigram_from`` (training data) adds the unigram baseline on the same
    tokens. A classifier reports accuracy, macro-F1 and per-class counts on ``data_source``'s
    labelled rows. ``dtype`` (parameters and compute) and ``quantize`` (``"int8"`` weights)
    evaluate a cheaper variant (``models.quantize.prepare``).
    """
    module, model_config, variables, source = load_variables_for_eval(checkpoint, step)
    tok, tokenizer = checkpoint_tokenizer(tokenizer, source)
    is_classifier = isinstance(model_config, ClassifierConfig)
    body = model_config.body if is_classifier else model_config
    run = source.config or run_config_for(model_config, checkpoint, {"data.seq_len": body.n_positions})
    task = task or (run.task.name if source.config else DEFAULT_TASKS[model_config.family])
    if task != "distill" and (task == "classify") != is_classifier:  # a distilled run's base task fits its model
        raise ValueError(f"task {task!r} does not fit {checkpoint}, which holds a {type(model_config).__name__}: "
                         f"classify goes with classifier checkpoints; evaluate this one with --task "
                         f"{DEFAULT_TASKS[model_config.family]}")
    if task not in ("classify", "distill") and not _task_fits(task, body):
        fitting = [t for t in TASK_NAMES if t not in ("classify", "distill") and _task_fits(t, body)]
        raise ValueError(f"--task {task} does not fit {checkpoint}, which holds a {body.family} model: "
                         f"use --task {' or --task '.join(fitting)}")
    changes = {"task.name": task, "data.grad_accum": 1, "data.tokenizer": str(tokenizer), "init_from": None,
               **(overrides or {})}
    if task not in ("classify", "distill"):
        changes["task.classifier"] = None
    config = run.replace(changes)
    seq_len, batch_size = config.data.seq_len, config.data.batch_size
    check_fit(tok, body, seq_len)
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
                       task_obj.eval_batches(corpus, batch_size // count, index, count), mesh,
                       config.log.eval_max_batches)
    result = {**metrics, "checkpoint": str(checkpoint), "step": source.step, "seq_len": seq_len,
              "dtype": (module.config.body if is_classifier else module.config).dtype, "quantize": quantize, "param_bytes": param_bytes(params)}
    if unigram_from is not None and config.log.eval_max_batches is None:
        if task_obj.name != "lm":
            raise ValueError("the unigram baseline applies to the language-modelling task only")
        result["unigram_baseline"] = unigram_baseline(task_obj.load_corpus(unigram_from, "train").tokens,
                                                      corpus.tokens, tok.vocab_size)
    return {**result, "model_config": dataclasses.asdict(model_config)}


def _task_fits(task: str, body) -> bool:
    """Causal LM for decoders, the masked-LM tasks for encoders."""
    return (task == "lm") == (body.family == "gpt")


def checkpoint_tokenizer(given: str | None, source) -> tuple:
    """``(tokenizer, its path)``: ``given``, else the one a checkpoint was trained with (a run's,
    or a Hugging Face folder's own files); a checkpoint without one names ``--tokenizer``."""
    path = given or source.tokenizer
    if not path:
        raise ValueError(f"{source.path} records no tokenizer: pass --tokenizer (a .model file, vocab.txt, or a GPT-2 "
                         "BPE folder)")
    try:
        return load_tokenizer(path), path
    except (OSError, ValueError) as e:
        if given:
            raise
        raise ValueError(f"{e}; pass --tokenizer with the model's tokenizer") from None


def generate_from_checkpoint(checkpoint, prompt: str, *, tokenizer=None, step=None, max_new_tokens: int = 40,
                             num_samples: int = 1, temperature: float = 0.8, top_k: int = 40, top_p: float = 1.0,
                             seed: int = 0, dtype=None, quantize=None, draft=None, speculate: int = 4) -> dict:
    """Continue ``prompt`` with a decoder checkpoint (a run folder or a Hugging Face GPT/GPT-2
    folder) using the KV cache; stops a sample at the tokenizer's end of text. With ``draft`` (a
    decoder checkpoint with the same tokenizer), decodes speculatively, the draft proposing
    ``speculate`` tokens per pass (``models.speculative``). Returns the continuations and the
    decoding speed (new tokens per second, compilation excluded)."""
    check_options(max_new_tokens, num_samples=num_samples, temperature=temperature, top_k=top_k, top_p=top_p)
    module, params, source = decoder_checkpoint(checkpoint, step, dtype, quantize)
    tok, _ = checkpoint_tokenizer(tokenizer, source)
    options = dict(num_samples=num_samples, rng=jax.random.PRNGKey(seed), temperature=temperature, top_k=top_k,
                   top_p=top_p, eos_id=tok.eos_id, vocab_size=min(tok.vocab_size, module.config.vocab_size))
    speculative = {}
    if draft is None:
        out = sample(module, params, [tok.encode(prompt)], max_new_tokens, **options)
    else:
        draft_module, draft_params, draft_source = decoder_checkpoint(draft, None, dtype, quantize)
        check_same_tokenizer(tok, draft_source, prompt)
        out = speculative_sample(module, params, draft_module, draft_params, [tok.encode(prompt)], max_new_tokens,
                                 k=speculate, **options)
        speculative = {"draft": str(draft), "speculate": speculate, "acceptance_rate": round(out.acceptance_rate, 3),
                       "target_passes": out.steps}
    texts = [tok.decode(ids) for ids in out.ids]
    return {
        "prompt": prompt,
        **({"continuation": texts[0]} if len(texts) == 1 else {"continuations": texts}),
        "new_tokens": out.new_tokens,
        "tokens_per_s": round(out.tokens_per_s, 1),
        "decode_s": round(out.seconds, 3),
        "compile_s": round(out.compile_seconds, 2),
        "dtype": module.config.dtype,
        "quantize": quantize,
        **speculative,
    }


def decoder_checkpoint(checkpoint, step, dtype, quantize, use: str = "generation continues text"):
    """A GPT/GPT-2 checkpoint ready to decode or score text: ``(module, params, source)``; any
    other model is refused, the message saying what ``use`` needs a language model for."""
    module, config, params, source = load_for_eval(checkpoint, step)
    if not isinstance(config, GPTConfig):
        hint = ("; it is a classifier: report its accuracy and F1 with jaxlm evaluate CHECKPOINT --data TEST_DATA"
                if isinstance(config, ClassifierConfig) else "")
        raise ValueError(f"{checkpoint} holds a {type(config).__name__}, but {use} with a "
                         f"GPT/GPT-2 language model{hint}")
    module, params = prepare(module, params, dtype, quantize)
    return module, params, source


def check_same_tokenizer(tok, draft_source, prompt: str) -> None:
    """Refuse a draft trained with another tokenizer than the target's (when it records one):
    the two must give the same ids for the same text."""
    if not draft_source.tokenizer:
        return
    draft_tok, path = checkpoint_tokenizer(None, draft_source)
    probe = prompt + " The quick brown fox jumps over 13 lazy dogs; naïve café."
    if draft_tok.vocab_size != tok.vocab_size or draft_tok.encode(probe) != tok.encode(probe):
        raise ValueError(f"the draft's tokenizer ({path}) is not the target's: a draft must share the target's "
                         "tokenizer (distil it from the target, or train it on the same tokenizer)")
