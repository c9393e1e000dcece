"""Head pruning of a trained run: Michel et al.'s importance on the run's own training data, then
the pruned model saved as a run folder (``scripts/prune_heads.py``, ``scripts/smaller.py heads``)."""

from __future__ import annotations

import dataclasses

import jax

from models.heads_pruning import head_importance, prune_heads, select_heads
from train import data
from train.checkpoint import load_params, save_params
from train.config import TrainConfig
from train.data.tokenizers import load_tokenizer, tokenizer_id
from train.tasks import LanguageModeling


def run_head_importance(run_dir, batches: int = 4, batch_size: int = 16):
    """``(config, params, run, importance)`` of a GPT run folder, the importance [layers, heads] from
    ``batches`` batches of its training data (seed 1, not the run's own order)."""
    module, config, params, run = load_params(run_dir)
    if run.get("task", "lm") != "lm" or config.family != "gpt":
        raise ValueError(f"{run_dir}: head importance is measured here with the language-modelling loss of a GPT run")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    task = LanguageModeling(TrainConfig(**{k: v for k, v in run.items() if k in fields}),
                            load_tokenizer(run["tokenizer"]), tokenizer_id(run["tokenizer"]))
    stream = data.PackedBatches(task.load_corpus(run["train_data"], "train"), run["seq_len"], batch_size, seed=1)

    def loss(p, batch):
        return LanguageModeling.loss(module, {"params": p}, batch, jax.random.key(0), True)[0]

    return config, params, run, head_importance(config, params, loss, [next(stream) for _ in range(batches)])


def prune_run(run_dir, dest, count: int, per_layer: bool = False, batches: int = 4):
    """Remove the ``count`` least important heads of a run (``count`` per layer if ``per_layer``)
    and save the smaller model as the run folder ``dest``; returns its config."""
    config, params, run, importance = run_head_importance(run_dir, batches)
    pruned_config, pruned = prune_heads(config, params, select_heads(config, importance, count, per_layer))
    save_params(dest, pruned_config, jax.device_get(pruned), {**run, "source": str(run_dir),
                                                              "importance": importance.tolist()})
    return pruned_config
