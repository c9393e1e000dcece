"""Question 3, BERT vs ALBERT v2: what do factorised embeddings and cross-layer sharing save, and
does sharing regularise?

Part 1 counts, from parameter shapes alone, every released ALBERT size three ways: as released
(E = 128, one shared group), with embeddings as wide as the hidden states (E = H), and without
sharing (one group per layer), next to the BERT of the same width. Part 2 pretrains a small
ALBERT (masked LM + sentence order) on SOTU with and without sharing and with and without dropout,
and compares the validation loss and the gap between training and validation loss.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import models
from experiments import common
from train.config import load_config

CONFIG, PRESET = "albert-mini-sotu", "albert-tiny"  # the run config pretrained here, and its model's preset
RELEASED = ("albert-base-v2", "albert-large-v2", "albert-xlarge-v2", "albert-xxlarge-v2")
BERT_OF_WIDTH = {768: "bert-base-uncased", 1024: "bert-large-uncased"}


def parameter_counts() -> list[dict]:
    rows = []
    for name in RELEASED:
        c = models.get_config(name)
        count = lambda **o: models.count_params(models.get_config(name, **o).module())  # noqa: E731
        row = {
            "preset": name, "layers": c.n_layer, "hidden": c.d_model, "embedding": c.d_embed,
            "released": count(), "unfactorised": count(d_embed=c.d_model),
            "unshared": count(n_groups=c.n_layer),
            "neither": count(d_embed=c.d_model, n_groups=c.n_layer),
        }
        bert = BERT_OF_WIDTH.get(c.d_model)
        row["bert"] = bert
        row["bert_params"] = models.count_params(models.create(bert)[0]) if bert else None
        rows.append(row)
    return rows


@dataclasses.dataclass(frozen=True)
class Scale:
    steps: int = 300
    seeds: tuple[int, ...] = (0, 1)
    dropout: float = 0.1
    eval_batches: int | None = 30


CPU = Scale()
ACCELERATOR = Scale(steps=5000, seeds=(0, 1, 2), eval_batches=None)
VARIANTS = {  # name -> (shared, dropout)
    "shared, no dropout (ALBERT v2)": (True, False),
    "shared, dropout": (True, True),
    "unshared, no dropout": (False, False),
    "unshared, dropout": (False, True),
}


def pretrain_config(scale: Scale, shared: bool, dropout: bool, seed: int, files: dict):
    """The ALBERT run config ``CONFIG`` with or without sharing and dropout, on the SOTU ``files``."""
    base = load_config(CONFIG)
    rate = scale.dropout if dropout else 0.0
    return base.replace({
        "model.n_groups": 1 if shared else base.model.n_layer,
        **{f"model.{name}": rate for name in models.AlbertConfig.DROPOUTS},
        "steps": scale.steps, "optimizer.warmup_steps": scale.steps // 10, "seed": seed,
        "data.train": files["train"], "data.eval": files["validation"], "data.tokenizer": files["tokenizer"],
        "log.eval_every": scale.steps, "checkpoint.every": scale.steps, "log.eval_max_batches": scale.eval_batches,
        "log.every": max(scale.steps // 20, 1), "checkpoint.keep": 1,
    })


def pretrain(scale: Scale, shared: bool, dropout: bool, seed: int, runs: Path) -> dict:
    summary = common.train_run(pretrain_config(scale, shared, dropout, seed, common.sotu_files()), runs)
    curve = summary["train_curve"]
    tail = [loss for _, loss in curve[-max(len(curve) // 5, 1):]]  # the last fifth of the logged steps
    validation = summary.get("validation") or {}
    return {
        "shared": shared, "dropout": dropout, "seed": seed, "params": summary.get("params"),
        "train_loss": statistics.fmean(tail) if tail else None, "validation_loss": validation.get("loss"),
        "validation_mlm_loss": validation.get("mlm_loss"), "validation_sop_accuracy": validation.get("sop_accuracy"),
        "diverged": summary["diverged"], "seconds": summary["seconds"], "train_curve": curve,
    }


def model_record(config) -> dict:
    """A model config as ``{"preset": PRESET, **the fields in which it differs from the preset}``."""
    preset = models.get_config(PRESET)
    return {"preset": PRESET, **{f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                                 if getattr(config, f.name) != getattr(preset, f.name)}}


def run(full: bool = False, runs: Path = common.RUNS) -> dict:
    s = ACCELERATOR if full else CPU
    common.share_compilations()
    trained = []
    for name, (shared, dropout) in VARIANTS.items():
        for seed in s.seeds:
            trained.append({"variant": name, **pretrain(s, shared, dropout, seed, runs)})
            print(f"q3 {name} seed {seed}: val {trained[-1]['validation_loss']} ({trained[-1]['seconds']:.0f} s)",
                  flush=True)
    base = load_config(CONFIG)
    return {"question": 3, "counts": parameter_counts(), "scale": dataclasses.asdict(s), "runs": trained,
            "model": model_record(base.model), "task": base.task.name, "max_ngram": base.task.max_ngram}


def tables(result: dict) -> dict[str, str]:
    m = lambda n: f"{n / 1e6:.1f}M"  # noqa: E731
    counts = common.markdown_table(
        ["preset", "L", "H", "E", "released (E, shared)", "E = H, shared", "E, unshared", "E = H, unshared",
         "saved by factorising", "saved by sharing", "BERT of width H"],
        [[r["preset"], r["layers"], r["hidden"], r["embedding"], m(r["released"]), m(r["unfactorised"]),
          m(r["unshared"]), m(r["neither"]), m(r["unfactorised"] - r["released"]), m(r["unshared"] - r["released"]),
          f"{r['bert']} {m(r['bert_params'])}" if r["bert"] else "none released"] for r in result["counts"]],
        "Parameters counted from shapes (`models.count_params`), heads for masked LM and sentence order included. "
        "'Saved by factorising' is E = H minus released, with sharing; 'saved by sharing' is unshared minus "
        "released, with factorised embeddings.",
    )
    s, rows = result["scale"], []
    for name in VARIANTS:
        runs = [r for r in result["runs"] if r["variant"] == name]
        rows.append([name, f"{runs[0]['params']:,}" if runs[0]["params"] else "n/a",
                     common.mean_spread(r["train_loss"] for r in runs),
                     common.mean_spread(r["validation_loss"] for r in runs),
                     common.mean_spread(r["validation_mlm_loss"] for r in runs),
                     common.mean_spread(r["validation_loss"] - r["train_loss"] for r in runs
                                        if r["validation_loss"] is not None and r["train_loss"] is not None)])
    model = result["model"]
    training = common.markdown_table(
        ["variant", "parameters", "train loss (last 20%)", "validation loss", "validation MLM loss",
         "validation - train"], rows,
        f"`{model['preset']}` shape ({model}), {result['task']} (masked LM with n-grams up to {result['max_ngram']} "
        f"+ sentence order), SOTU with the 8k sentencepiece vocabulary, {s['steps']} steps of 16 x 128 tokens, "
        f"dropout {s['dropout']} where on; losses are masked LM + SOP in nats; mean ± half-range over seeds "
        f"{list(s['seeds'])}; validation on {'all' if s['eval_batches'] is None else s['eval_batches']} batches.",
    )
    return {"q3-counts": counts, "q3-training": training}
