"""Question 2, GPT vs BERT: does bidirectional pretraining make better classifiers, and does
next-sentence prediction (with its segment embeddings) earn its place?

Three bodies of the same shape are pretrained on SOTU with the same data, tokenizer and step
budget: a causal GPT-2 (next-token LM), a BERT with masked LM + next-sentence prediction, and
the same BERT with masked LM alone (task ``mlm``: the same batches, the NSP head unused). Each is
then fine-tuned with one recipe (STLR, concat pooling, linear head, every layer training) on the
two labelled tasks of the fine-tuning issue, over several seeds, and scored on a fixed subset of
each test split. The segment embeddings' parameters are counted from the presets' shapes.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

import models
from experiments import common
from train.config import TrainConfig
from train.finetuning import pretrained_spec


@dataclasses.dataclass(frozen=True)
class Scale:
    width: int = 128
    layers: int = 2
    heads: int = 4
    seq_len: int = 64
    batch_size: int = 16
    pretrain_steps: int = 300
    pretrain_lr: float = 1e-3
    finetune_steps: int = 60
    finetune_lr: float = 5e-4
    seeds: tuple[int, ...] = (0, 1)
    test_rows: int | None = 256


CPU = Scale()
ACCELERATOR = Scale(width=256, layers=4, heads=4, seq_len=128, batch_size=32, pretrain_steps=5000,
                    finetune_steps=500, seeds=(0, 1, 2), test_rows=None)

# name -> (preset, task)
BODIES = {
    "GPT-2 (causal LM)": ("gpt2-mini", "lm"),
    "BERT (masked LM + NSP)": ("bert-mini", "mlm_nsp"),
    "BERT (masked LM only)": ("bert-mini", "mlm"),
}


def body(s: Scale, preset: str):
    """The preset at the shape every body shares, GPT-2 or BERT."""
    return models.get_config(preset, vocab_size=common.SOTU_VOCAB, n_positions=s.seq_len, d_model=s.width,
                             n_layer=s.layers, n_head=s.heads, d_ff=4 * s.width)


def pretrain_config(s: Scale, preset: str, task: str, files: dict) -> TrainConfig:
    """A body's pretraining run on the SOTU ``files`` (``common.sotu_files``)."""
    return TrainConfig().replace({
        "model": body(s, preset), "task.name": task, "data.train": files["train"],
        "data.eval": files["validation"], "data.tokenizer": files["tokenizer"], "data.seq_len": s.seq_len,
        "data.batch_size": s.batch_size, "steps": s.pretrain_steps, "optimizer.learning_rate": s.pretrain_lr,
        "optimizer.warmup_steps": s.pretrain_steps // 10, "optimizer.weight_decay": 0.01,
        "log.eval_every": s.pretrain_steps, "checkpoint.every": s.pretrain_steps, "log.eval_max_batches": 30,
        "log.every": max(s.pretrain_steps // 10, 1), "checkpoint.keep": 1,
    })


def finetune_config(s: Scale, source: Path, files: dict, seed: int) -> TrainConfig:
    """The one recipe's classifier run from the pretrained ``source`` on a labelled task's ``files``
    (``common.task_files``), scored on its test rows."""
    return TrainConfig().replace({
        **pretrained_spec(source), "task.name": "classify", "init_from": str(source),
        "data.train": str(files["train"]), "data.eval": str(files["test"]), "data.seq_len": s.seq_len,
        "data.batch_size": s.batch_size, "steps": s.finetune_steps, "optimizer.learning_rate": s.finetune_lr,
        "optimizer.schedule": "stlr", "optimizer.warmup_steps": 0, "optimizer.weight_decay": 0.01,
        "optimizer.b2": 0.99, "seed": seed, "task.classifier": {"pooling": "concat", "head": "linear"},
        "log.eval_every": s.finetune_steps, "checkpoint.every": s.finetune_steps, "checkpoint.keep": 1,
        "log.every": max(s.finetune_steps // 6, 1),
    })


def finetune(s: Scale, source: Path, files: dict, seed: int, runs: Path) -> dict:
    summary = common.train_run(finetune_config(s, source, files, seed), runs)
    test = summary.get("validation") or {}
    return {"accuracy": test.get("accuracy"), "macro_f1": test.get("macro_f1"), "seconds": summary["seconds"],
            "diverged": summary["diverged"]}


def segment_embedding_counts() -> list[dict]:
    rows = []
    for name in ("bert-base-uncased", "bert-large-uncased", "bert-mini"):
        c = models.get_config(name)
        total = models.count_params(models.create(name)[0])
        segment = c.n_segments * c.d_model
        rows.append({"preset": name, "params": total, "segment": segment, "nsp_head": 2 * c.d_model + 2})
    return rows


def run(full: bool = False, runs: Path = common.RUNS) -> dict:
    s = ACCELERATOR if full else CPU
    common.share_compilations()
    runs.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="experiment-q2-", dir=runs))
    tasks = {task: common.task_files(task, scratch, s.test_rows) for task in common.LABELLED_TASKS}
    pretraining, finetuning = [], []
    try:
        for name, (preset, task) in BODIES.items():
            run_dir = scratch / name.split()[0].lower() / task
            summary = common.train_run(pretrain_config(s, preset, task, common.sotu_files()), run_dir, keep=True)
            validation = summary.get("validation") or {}
            pretraining.append({"body": name, "task": task, "params": summary.get("params"),
                                "validation": {k: v for k, v in validation.items() if isinstance(v, (int, float))},
                                "seconds": summary["seconds"], "diverged": summary["diverged"]})
            print(f"q2 pretrain {name}: {validation.get('loss')} ({summary['seconds']:.0f} s)", flush=True)
            for task_name, files in tasks.items():
                for seed in s.seeds:
                    row = {"body": name, "task": task_name, "seed": seed, **finetune(s, run_dir, files, seed, scratch)}
                    finetuning.append(row)
                    print(f"q2 {name} on {task_name} seed {seed}: accuracy {row['accuracy']} "
                          f"({row['seconds']:.0f} s)", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = {"question": 2, "scale": dataclasses.asdict(s), "pretraining": pretraining, "finetuning": finetuning,
              "test_rows": {t: f["test_rows"] for t, f in tasks.items()}, "segments": segment_embedding_counts(),
              "seconds": sum(r["seconds"] for r in pretraining + finetuning)}
    return result


def tables(result: dict) -> dict[str, str]:
    s = result["scale"]
    rows = []
    for name in BODIES:
        pre = next(r for r in result["pretraining"] if r["body"] == name)
        row = [name, f"{pre['params']:,}" if pre["params"] else "n/a"]
        for task in common.LABELLED_TASKS:
            runs = [r for r in result["finetuning"] if r["body"] == name and r["task"] == task]
            row += [common.mean_spread(r["accuracy"] for r in runs), common.mean_spread(r["macro_f1"] for r in runs)]
        rows.append(row)
    header = ["pretrained body", "parameters (with pretraining heads)"]
    for task in common.LABELLED_TASKS:
        header += [f"{task} accuracy", f"{task} macro-F1"]
    finetuning = common.markdown_table(
        header, rows,
        f"{s['layers']} layers, width {s['width']}, {s['heads']} heads; pretrained {s['pretrain_steps']} steps of "
        f"{s['batch_size']} x {s['seq_len']} tokens on SOTU (8k sentencepiece vocabulary, peak lr "
        f"{s['pretrain_lr']}); fine-tuned {s['finetune_steps']} steps (STLR, peak lr {s['finetune_lr']}, concat "
        f"pooling, linear head, every layer training) and scored on {result['test_rows']} test rows; mean ± "
        f"half-range over seeds {list(s['seeds'])}. All runs took {result['seconds'] / 60:.0f} minutes.",
    )
    pre_rows = [[r["body"], r["task"], f"{r['validation'].get('loss', float('nan')):.3f}",
                 ", ".join(f"{k} {v:.3f}" for k, v in r["validation"].items()
                           if k.endswith("accuracy") or k == "mlm_loss")]
                for r in result["pretraining"]]
    pretraining = common.markdown_table(["body", "pretraining task", "validation loss", "validation details"],
                                        pre_rows, "Losses of different objectives: not comparable across rows "
                                        "except the masked-LM loss of the two BERTs.")
    segments = common.markdown_table(
        ["preset", "parameters", "segment embeddings", "share", "NSP classifier"],
        [[r["preset"], f"{r['params']:,}", f"{r['segment']:,}", f"{r['segment'] / r['params']:.4%}",
          f"{r['nsp_head']:,}"] for r in result["segments"]],
        "Segment (token type) embeddings: n_segments (2) x d_model; the NSP classifier: hidden x 2 + 2 "
        "(on the pooler, which the encoders keep for classification anyway).",
    )
    return {"q2-finetuning": finetuning, "q2-pretraining": pretraining, "q2-segments": segments}
