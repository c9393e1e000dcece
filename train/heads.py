"""Head pruning of a trained run: Michel et al.'s importance on the run's own training data, then
the pruned model saved as a run folder (``jaxlm prune``, ``jaxlm experiments smaller-heads``)."""

from __future__ import annotations

import jax

from models.heads_pruning import head_importance, prune_heads, select_heads
from train import data
from train.checkpoint import load_params, save_params
from train.data.tokenizers import load_tokenizer, tokenizer_id
from train.tasks import LanguageModeling


def run_head_importance(run_dir, batches: int = 4, batch_size: int = 16):
    """``(config, params, source, importance)`` of a GPT run folder, the importance [layers, heads]
    from ``batches`` batches of its training data (seed 1, not the run's own order)."""
    module, config, params, source = load_params(run_dir)
    run = source.config
    if run.task.name != "lm" or config.family != "gpt":
        raise ValueError(f"{run_dir}: head importance is measured here with the language-modelling loss of a GPT run")
    if not run.data.train or not run.data.tokenizer:
        raise ValueError(f"{run_dir} records no training data or tokenizer to measure head importance on")
    task = LanguageModeling(run, load_tokenizer(run.data.tokenizer), tokenizer_id(run.data.tokenizer))
    stream = data.PackedBatches(task.load_corpus(run.data.train, "train"), run.data.seq_len, batch_size, seed=1)

    def loss(p, batch):
        return LanguageModeling.loss(module, {"params": p}, batch, jax.random.key(0), True)[0]

    return config, params, source, head_importance(config, params, loss, [next(stream) for _ in range(batches)])


def prune_run(run_dir, dest, count: int, per_layer: bool = False, batches: int = 4):
    """Remove the ``count`` least important heads of a run (``count`` per layer if ``per_layer``)
    and save the smaller model as the run folder ``dest`` (the run itself is only read); returns
    its config."""
    config, params, source, importance = run_head_importance(run_dir, batches)
    pruned_config, pruned = prune_heads(config, params, select_heads(config, importance, count, per_layer))
    save_params(dest, pruned_config, jax.device_get(pruned), source.config,
                {"source": str(run_dir), "importance": importance.tolist()})
    return pruned_config
