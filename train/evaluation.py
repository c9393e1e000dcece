"""Evaluation of parameters on held-out data: ours from a run folder, or an HF checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax

from train import sharding
from train.step import make_eval_step, params_sharding


def evaluate(eval_step, params, task, batches, mesh, max_batches: int | None = None) -> dict:
    """Sum an eval step's statistics over ``batches`` and summarise them."""
    totals = None
    in_sharding = sharding.batch_sharding(mesh)
    for i, local in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        sums = eval_step(params, sharding.global_batch(local, in_sharding))
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    if totals is None:
        raise ValueError("the evaluation data gave no batches")
    return task.summarize(totals)


def load_for_eval(checkpoint, step: int | None = None, **model_overrides):
    """A run folder of ours (has run.json) or an HF folder (has config.json)
    -> ``(module, model_config, params, run_info)``."""
    from models import hf
    from train.checkpoint import load_params

    path = Path(checkpoint)
    if (path / "run.json").exists():
        return load_params(path, step, **model_overrides)
    if (path / "config.json").exists():
        module, config, params = hf.load_pretrained(path, **model_overrides)
        return module, config, params, {"source": "huggingface"}
    raise FileNotFoundError(f"{path} is neither a run folder (run.json) nor a Hugging Face folder (config.json)")


def evaluate_checkpoint(checkpoint, data_source, *, tokenizer=None, task="lm", seq_len=None, batch_size=8,
                        text_field="text", max_batches=None, step=None, split="validation") -> dict:
    """Evaluate a checkpoint on a corpus; returns the metrics, the token count and the model config.

    ``tokenizer`` defaults to the one the run was trained with (an HF folder needs one given);
    ``seq_len`` to the run's, else the model's context.
    """
    from train.config import TrainConfig
    from train.fetch import cache_dir
    from train.loop import check_fit, context_length, tokenizer_id
    from train.tasks import make_task
    from train.tokenizers import load_tokenizer
    from train import data

    module, model_config, params, run = load_for_eval(checkpoint, step)
    tokenizer = tokenizer or run.get("tokenizer")
    if not tokenizer:
        raise ValueError("no tokenizer: pass one (a .model file, vocab.txt, or a GPT-2 BPE folder)")
    seq_len = seq_len or run.get("seq_len") or context_length(model_config)
    tok = load_tokenizer(tokenizer)
    check_fit(tok, model_config, seq_len)
    config = TrainConfig(task=run.get("task", task), seq_len=seq_len, batch_size=batch_size, warmup_steps=0,
                         tokenizer=str(tokenizer), text_field=text_field)
    corpus = data.load_corpus(data_source, tok, tokenizer_id(tokenizer), cache_dir() / "tokens", split=split,
                              text_field=text_field)
    mesh = sharding.make_mesh()
    shardings = params_sharding(module, mesh)
    params = jax.device_put(params, shardings)
    task_obj = make_task(config, tok)
    metrics = evaluate(make_eval_step(module, task_obj, shardings, mesh), params, task_obj,
                       task_obj.eval_batches(corpus, batch_size, jax.process_index(), jax.process_count()),
                       mesh, max_batches)
    return {**metrics, "checkpoint": str(checkpoint), "step": run.get("step"), "seq_len": seq_len,
            "model_config": dataclasses.asdict(model_config)}
