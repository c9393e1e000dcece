"""Question 7 on long documents: does concat pooling ([final state, max, mean]) keep what a single
vector ([CLS]) loses when a text is long?

    jaxlm experiments long-documents    # MiniLM, 64 and 256 tokens, SpamAssassin and a planted task

The real all-MiniLM-L6-v2 body (512 positions) is fine-tuned as a classifier with its [CLS]
pooler or with concat pooling, at 64 and at 256 tokens, with ``seeds`` seeds each (the table
counts them), on two tasks:

- SpamAssassin (ham vs spam), whose emails run to hundreds of tokens;
- planted: passages of State of the Union text (the validation addresses) of about 200 words,
  with one sentence planted at a random word position, ``the committee approved the measure``
  or ``the committee rejected the measure``: the label is one word at a random place in a long
  distractor. Its test accuracy is also reported by where the sentence sits (quarters of the
  passage), so a pooling that loses the middle of a text shows it.

Writes ``runs/experiments/long-documents/results.jsonl`` (a rerun skips what it holds) and
``experiments/results/long-documents.json``; REPORT.md's question 7 shows the table.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import time
from pathlib import Path

from experiments import common

RESULT = "long-documents"
PLANTED = {"approved": "the committee approved the measure", "rejected": "the committee rejected the measure"}
POOLINGS = ("pooler", "concat")
LENGTHS = (64, 256)
QUARTERS = ("first", "second", "third", "fourth")


def planted_rows(texts: list[str], n: int, words: int, seed: int) -> list[dict]:
    """``n`` rows of ``words`` distractor words taken in order from ``texts``, each with one of
    :data:`PLANTED`'s sentences inserted at a random word position; ``position`` is that place
    as a fraction of the passage."""
    pool = " ".join(texts).split()
    if len(pool) < words + 1:
        raise ValueError(f"the distractor text has {len(pool)} words; the planted task needs more than {words}")
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        start = rng.randrange(len(pool) - words)
        passage = pool[start:start + words]
        label = ("approved", "rejected")[i % 2]
        at = rng.randrange(words + 1)
        text = " ".join(passage[:at] + PLANTED[label].split() + passage[at:])
        rows.append({"text": text, "label": label, "position": at / words})
    return rows


def quarter(position: float) -> str:
    return QUARTERS[min(int(position * 4), 3)]


def write_planted(out: Path, texts: list[str], words: int = 200, sizes=(("train", 480), ("test", 240))) -> dict:
    """The planted task's splits under ``out`` and its test rows split by quarter -> paths."""
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for seed, (split, n) in enumerate(sizes):
        rows = planted_rows(texts, n, words, seed)
        files[split] = out / f"planted-{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
        if split == "test":
            for q in QUARTERS:
                files[f"test-{q}"] = out / f"planted-test-{q}.jsonl"
                files[f"test-{q}"].write_text("".join(json.dumps(r) + "\n" for r in rows
                                                      if quarter(r["position"]) == q))
    return files


def run_config(source, files: dict, pooling: str, seq_len: int, seed: int, run_dir: Path, steps: int = 60,
               learning_rate: float = 1e-4, batch_size: int = 16):
    """A MiniLM classifier run: ``pooling`` over ``seq_len`` tokens, scored on the test split."""
    from train.config import TrainConfig
    from train.finetuning import pretrained_spec

    return TrainConfig().replace({
        **pretrained_spec(source), "task.name": "classify", "init_from": str(source),
        "data.train": str(files["train"]), "data.eval": str(files["test"]), "data.seq_len": seq_len,
        "data.batch_size": batch_size, "steps": steps, "seed": seed, "optimizer.learning_rate": learning_rate,
        "optimizer.schedule": "stlr", "optimizer.warmup_steps": 0, "optimizer.weight_decay": 0.01,
        "task.classifier": {"pooling": pooling, "head": "linear"}, "log.eval_every": steps,
        "checkpoint.every": steps, "checkpoint.keep": 1, "log.every": max(1, steps // 6), "log.progress_bar": False,
        "run_dir": str(run_dir),
    })


def run_one(config, quarters: dict | None = None) -> dict:
    """One run's test scores (and, for the planted task, its accuracy in each quarter)."""
    from train.evaluation import evaluate_checkpoint
    from train.loop import train

    start = time.perf_counter()
    summary = train(config)
    out = {"accuracy": summary["validation"]["accuracy"], "macro_f1": summary["validation"]["macro_f1"],
           "seconds": time.perf_counter() - start}
    for q, path in (quarters or {}).items():
        out[f"accuracy_{q}"] = evaluate_checkpoint(config.run_dir, str(path), split="test")["accuracy"]
    shutil.rmtree(Path(config.run_dir) / "checkpoints", ignore_errors=True)
    return out


def run(full: bool = False, runs: Path = common.RUNS, seeds: int = 3) -> dict:
    from models import hf
    from train.data.documents import read_texts

    out = Path(runs) / "long-documents"
    log = common.RunLog(out / "results.jsonl", ("task", "pooling", "seq_len", "seed"))
    source = hf.minilm_folder()
    planted = write_planted(out / "data", list(read_texts([common.sotu_files()["validation"]])))
    spam = common.task_files("spam-assassin", out, 256)
    tasks = {"spam-assassin": ({"train": spam["train"], "test": spam["test"]}, None),
             "planted": (planted, {q: planted[f"test-{q}"] for q in QUARTERS})}
    for task, (files, quarters) in tasks.items():
        for seq_len in LENGTHS:
            for pooling in POOLINGS:
                for seed in range(seeds):
                    if (task, pooling, seq_len, seed) in log.runs:
                        continue
                    run_dir = out / "runs" / f"{task}-{pooling}-{seq_len}-seed{seed}"
                    row = {"task": task, "pooling": pooling, "seq_len": seq_len, "seed": seed,
                           **run_one(run_config(source, files, pooling, seq_len, seed, run_dir), quarters)}
                    log.add(row)
                    print(json.dumps(row), flush=True)
    return {"question": 7, "command": "jaxlm experiments long-documents", "runs": list(log.runs.values()),
            "sizes": {"steps": 60, "batch_size": 16, "learning_rate": 1e-4, "planted_words": 200,
                      "planted_rows": {"train": 480, "test": 240}, "spam_test_rows": 256}}


def tables(result: dict) -> dict[str, str]:
    rows = []
    for task in sorted({r["task"] for r in result["runs"]}):
        for seq_len in LENGTHS:
            for pooling in POOLINGS:
                runs = [r for r in result["runs"] if (r["task"], r["seq_len"], r["pooling"]) == (task, seq_len, pooling)]
                if not runs:
                    continue
                spread = lambda key: common.mean_spread([r.get(key) for r in runs])  # noqa: E731
                rows.append([task, seq_len, pooling, len(runs), spread("accuracy"), spread("macro_f1"),
                             *(spread(f"accuracy_{q}") if task == "planted" else "" for q in QUARTERS),
                             f"{statistics.fmean(r['seconds'] for r in runs):.0f}"])
    sizes = result.get("sizes", {})
    return {"q7-long-documents": common.markdown_table(
        ["task", "tokens", "pooling", "seeds", "test accuracy", "test macro-F1",
         *(f"planted in the {q} quarter" for q in QUARTERS), "seconds per run"], rows,
        f"all-MiniLM-L6-v2 fine-tuned as a classifier ({sizes.get('steps')} steps of {sizes.get('batch_size')}, "
        f"STLR at {sizes.get('learning_rate')}), mean ± half the range over the seeds. Planted: "
        f"{sizes.get('planted_words')}-word SOTU passages with the deciding sentence at a random place; its "
        "accuracy by the quarter of the passage the sentence sits in (at 64 tokens the last three quarters "
        "are cut off: chance is 0.5 there).")}
