"""What every experiment shares: the SOTU data, short training runs, JSON results, tables, plots.

Each experiment has ``run(full: bool, runs: Path) -> dict`` (the JSON saved for it) and
``tables(result) -> dict[str, str]`` (markdown, generated from that JSON). ``write_report``
puts the tables into ``REPORT.md`` between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->``
markers, so the figures in the report are the JSON's, never typed by hand.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results"
REPORT = REPO / "REPORT.md"
RUNS = Path("runs/experiments")  # where experiments keep their run folders (jaxlm experiments --out)
MAIN_JOB = REPO / "runs" / "gpt2-mini-sotu"  # the main job's run (bash scripts/main.sh): q5's, the ablation's
SOTU_VOCAB = 8192


def sotu_files() -> dict:
    """The SOTU train/validation split and its 8,192-piece sentencepiece model (the main job's),
    prepared on first use."""
    from train.data.corpora import prepare_sotu
    from train.data.documents import read_texts
    from train.data.downloads import cache_dir
    from train.data.tokenizers import train_sentencepiece, training_sentences

    root = cache_dir() / "sotu"
    train, validation = root / "train.jsonl", root / "validation.jsonl"
    if not (train.exists() and validation.exists()):
        prepare_sotu(root)
    model = root / "spm8k.model"
    if not model.exists():
        train_sentencepiece(training_sentences(read_texts([train])), root / "spm8k", vocab_size=SOTU_VOCAB)
    return {"train": str(train), "validation": str(validation), "tokenizer": str(model)}


LABELLED_TASKS = ("spam-assassin", "sotu-party")


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class RunLog:
    """An experiment's finished runs: one JSON line each in ``path``, keyed by the fields ``key``,
    so a rerun skips the runs it holds (a later line for the same run replaces the earlier)."""

    def __init__(self, path: Path, key: tuple[str, ...]):
        self.path, self.key = Path(path), tuple(key)
        self.runs = {self.key_of(r): r for r in (read_rows(self.path) if self.path.exists() else [])}

    def key_of(self, row: dict) -> tuple:
        return tuple(row[k] for k in self.key)

    def add(self, row: dict) -> None:
        self.runs[self.key_of(row)] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def task_files(task: str, out: Path, test_rows: int | None, validation_rows: int | None = None) -> dict:
    """A labelled task's prepared splits (prepared now if missing), and the test and validation rows
    an experiment scores: fixed random subsets of ``test_rows`` and ``validation_rows`` rows (all
    with None), written under ``out``."""
    from train.data.downloads import cache_dir

    if task not in LABELLED_TASKS:
        raise ValueError(f"unknown labelled task {task!r}; choose one of {', '.join(LABELLED_TASKS)}")
    folder = cache_dir() / task
    if not all((folder / f"{s}.jsonl").exists() for s in ("train", "validation", "test")):
        from train.data.corpora import LABELLED

        LABELLED[task](folder)
    files = {"train": folder / "train.jsonl"}
    for split, count in (("test", test_rows), ("validation", validation_rows)):
        rows = read_rows(folder / f"{split}.jsonl")
        if count is not None and count < len(rows):
            rows = [rows[i] for i in sorted(random.Random(0).sample(range(len(rows)), count))]
        path = Path(out) / "data" / f"{task}-{split}-{len(rows)}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files.update({split: path, f"{split}_rows": len(rows)})
    return files


def share_compilations() -> None:
    """Runs that differ only in seeds compile the same step: keep XLA's executables on disk
    (``.cache/xla``) so later runs reuse them."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(REPO / ".cache" / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def train_run(config, folder: Path, keep: bool = False) -> dict:
    """Train ``config`` (a TrainConfig) in a fresh temporary run folder under ``folder``, removed
    afterwards, or with ``keep`` in ``folder`` itself, left in place for later use; returns the
    loop's summary plus ``diverged`` (a non-finite loss stopped it), the train-loss curve and the
    wall time."""
    from train.loop import NonFiniteLoss, train
    from train.metrics import read_metrics

    scratch = None
    if not keep:
        Path(folder).mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="experiment-", dir=folder))
    run_dir = Path(folder) if keep else scratch / "run"
    config = config.replace({"run_dir": str(run_dir), "log.progress_bar": False, "checkpoint.async_save": False})
    t0 = time.perf_counter()
    try:
        summary = {**train(config), "diverged": False}
    except NonFiniteLoss as e:
        summary = {"diverged": True, "error": str(e), "validation": None}
    summary["seconds"] = time.perf_counter() - t0
    summary["train_curve"] = [(r["step"], r["loss"]) for r in read_metrics(config.run_dir) if r["split"] == "train"]
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    summary.pop("run_dir", None)
    summary.pop("loss_curve", None)
    return summary


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(portable(result), indent=1, default=float) + "\n")
    return path


def portable(value):
    """``value`` with the machine's own paths in its strings named as anyone's: relative to the
    repository, ``~`` for the home folder."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    if isinstance(value, str):
        return value.replace(f"{REPO}/", "").replace(str(REPO), ".").replace(f"{Path.home()}/", "~/")
    return value


def load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run `jaxlm experiments {name}` first")
    return json.loads(path.read_text())


def mean_spread(values) -> str:
    """``mean ± half the range`` of finite values (``n/a`` when none), 3 decimals."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {(max(values) - min(values)) / 2:.3f}"


def markdown_table(header: list[str], rows: list[list], caption: str | None = None) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + (f"\n\n{caption}" if caption else "")


def write_report(tables: dict[str, str]) -> list[str]:
    """Replace each ``<!-- table:NAME -->...<!-- /table:NAME -->`` block of REPORT.md with the
    generated table; returns the names it filled. A name with no markers is an error."""
    text = REPORT.read_text()
    for name, table in tables.items():
        pattern = re.compile(rf"(<!-- table:{re.escape(name)} -->\n).*?(<!-- /table:{re.escape(name)} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"REPORT.md has no <!-- table:{name} --> ... <!-- /table:{name} --> markers")
        text = pattern.sub(lambda m: m.group(1) + table.rstrip("\n") + "\n" + m.group(2), text)
    REPORT.write_text(text)
    return sorted(tables)


def figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
