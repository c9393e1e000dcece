"""Question 1, GPT vs GPT-2: which of GPT-2's three architectural changes matter, alone and together?

GPT-2 moved LayerNorm to the input of each sub-block (pre-LN), added a LayerNorm after the last
block, and drew the residual output projections with std 0.02/sqrt(2 n_layer). Each change is
switched on alone on top of GPT's post-LN block, and all three together (GPT-2), at two depths,
with and without learning-rate warmup, over several seeds, on the SOTU corpus. Each run reports
its final validation loss and whether it diverged; the gradient norm of every layer at
initialisation shows the effect Xiong et al. (2020) describe: post-LN gradients grow towards the
output layer, pre-LN gradients do not.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import optax

import models
import models.layers
from experiments import common
from train.config import TrainConfig

VARIANTS = {  # name -> (pre_ln, final_ln, scale_residual_init)
    "GPT (post-LN)": (False, False, False),
    "+ pre-LN only": (True, False, False),
    "+ final LN only": (False, True, False),
    "+ scaled init only": (False, False, True),
    "+ pre-LN and final LN": (True, True, False),
    "GPT-2 (all three)": (True, True, True),
}
# The two ends again at a lower peak learning rate, deepest model, with warmup: is post-LN's
# trouble the learning rate?
LOW_LR_VARIANTS = ("GPT (post-LN)", "GPT-2 (all three)")


@dataclasses.dataclass(frozen=True)
class Scale:
    d_model: int = 64
    n_head: int = 4
    depths: tuple[int, ...] = (2, 8)
    seq_len: int = 64
    batch_size: int = 16
    steps: int = 150  # the CPU budget: the question within 20 minutes on 2 idle cores
    learning_rate: float = 2e-3
    low_learning_rate: float = 5e-4
    warmup_frac: float = 0.1
    seeds: tuple[int, ...] = (0, 1)
    eval_batches: int | None = 8


CPU = Scale()
ACCELERATOR = Scale(d_model=256, n_head=8, depths=(6, 24), seq_len=128, batch_size=32, steps=2000,
                    learning_rate=1e-3, low_learning_rate=2.5e-4, seeds=(0, 1, 2), eval_batches=None)


def model_config(scale: Scale, depth: int, variant: str):
    pre_ln, final_ln, scaled = VARIANTS[variant]
    return models.get_config(
        "gpt2-mini", vocab_size=common.SOTU_VOCAB, n_positions=scale.seq_len, d_model=scale.d_model,
        n_head=scale.n_head, d_ff=4 * scale.d_model, n_layer=depth, pre_ln=pre_ln, final_ln=final_ln,
        scale_residual_init=scaled, scan_layers=True, **dict.fromkeys(models.GPTConfig.DROPOUTS, 0.0),
    )


def run_config(scale: Scale, files: dict, depth: int, variant: str, warmup: bool, seed: int,
               learning_rate: float | None = None) -> TrainConfig:
    return TrainConfig().replace({
        "model": model_config(scale, depth, variant), "data.train": files["train"],
        "data.eval": files["validation"], "data.tokenizer": files["tokenizer"], "data.seq_len": scale.seq_len,
        "data.batch_size": scale.batch_size, "steps": scale.steps,
        "optimizer.learning_rate": learning_rate or scale.learning_rate,
        "optimizer.warmup_steps": round(scale.warmup_frac * scale.steps) if warmup else 0, "seed": seed,
        "log.every": max(scale.steps // 15, 1), "log.eval_every": scale.steps, "checkpoint.every": scale.steps,
        "log.eval_max_batches": scale.eval_batches, "checkpoint.keep": 1,
    })


def layer_grad_norms(config: TrainConfig) -> list[float]:
    """Global norm of each block's gradient at initialisation, on the run's first training batch."""
    from train.data.tokenizers import load_tokenizer, tokenizer_id
    from train.task_registry import make_task
    from train.tasks import LanguageModeling

    tokenizer = load_tokenizer(config.data.tokenizer)
    task = make_task(config, tokenizer, tokenizer_id(config.data.tokenizer))
    batch = next(task.train_batches(task.load_corpus(config.data.train, "train"), config.data.batch_size, 0, 1))
    module = config.model.module()
    params = models.init_params(module, jax.random.split(jax.random.PRNGKey(config.seed))[0])
    grads = jax.jit(jax.grad(lambda p: LanguageModeling.loss(module, {"params": p}, batch, jax.random.PRNGKey(0), True)[0]))(params)
    layers = models.layers.unstack_layers(grads, module.config.n_layer, module.config.scan_layers, "blocks")
    return [float(optax.tree.norm(layer)) for layer in layers]


def run(full: bool = False, runs: Path = common.RUNS) -> dict:
    s = ACCELERATOR if full else CPU
    files = common.sotu_files()
    common.share_compilations()
    ladder, low_lr, grad_norms = [], [], {}
    log = common.RunLog(Path(runs) / "q1" / ("full" if full else "cpu") / "results.jsonl",
                        ("depth", "variant", "warmup", "seed", "learning_rate"))  # a rerun skips what it holds

    def record(rows, depth, variant, warmup, seed, learning_rate=None):
        this = (depth, variant, warmup, seed, learning_rate or s.learning_rate)
        if this in log.runs:
            rows.append(log.runs[this])
            return
        summary = common.train_run(run_config(s, files, depth, variant, warmup, seed, learning_rate), runs)
        rows.append({**dict(zip(log.key, this)), "validation_loss": (summary.get("validation") or {}).get("loss"),
                     "diverged": summary["diverged"], "seconds": summary["seconds"],
                     "train_curve": summary["train_curve"]})
        log.add(rows[-1])
        print(f"q1 depth {depth} {variant} warmup={warmup} seed {seed} lr {rows[-1]['learning_rate']}: "
              f"{rows[-1]['validation_loss']} ({summary['seconds']:.0f} s)", flush=True)

    for depth in s.depths:
        for variant in VARIANTS:
            grad_norms[f"{variant} @ {depth}"] = layer_grad_norms(run_config(s, files, depth, variant, True, 0))
            for warmup in (True, False):
                for seed in s.seeds:
                    record(ladder, depth, variant, warmup, seed)
    for variant in LOW_LR_VARIANTS:
        for seed in s.seeds:
            record(low_lr, max(s.depths), variant, True, seed, s.low_learning_rate)
    presets = {name: {"vocab_size": c.vocab_size, "context": c.n_positions, "pre_ln": c.pre_ln,
                      "final_ln": c.final_ln, "scale_residual_init": c.scale_residual_init}
               for name, c in ((n, models.get_config(n)) for n in ("openai-gpt", "gpt2"))}
    result = {"question": 1, "scale": dataclasses.asdict(s), "runs": ladder, "low_lr_runs": low_lr,
              "grad_norms_at_init": grad_norms, "presets": presets,
              "seconds": sum(r["seconds"] for r in ladder + low_lr)}
    plot(result)
    return result


def plot(result: dict) -> None:
    plt = common.figure()
    depths = result["scale"]["depths"]
    fig, axes = plt.subplots(1, len(depths), figsize=(5 * len(depths), 3.6))
    for ax, depth in zip(np.atleast_1d(axes), depths):
        for variant in VARIANTS:
            norms = result["grad_norms_at_init"][f"{variant} @ {depth}"]
            ax.plot(range(1, len(norms) + 1), norms, marker="o", label=variant)
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel("gradient norm at init")
        ax.set_title(f"{depth} layers")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(common.RESULTS / "q1_grad_norms.png", dpi=100)
    plt.close(fig)


def tables(result: dict) -> dict[str, str]:
    s = result["scale"]
    rows = []
    for depth in s["depths"]:
        for variant in VARIANTS:
            row = [depth, variant]
            for warmup in (True, False):
                runs = [r for r in result["runs"] if r["depth"] == depth and r["variant"] == variant
                        and r["warmup"] == warmup]
                row.append(common.mean_spread(r["validation_loss"] for r in runs))
                row.append(f"{sum(r['diverged'] for r in runs)}/{len(runs)}")
            norms = result["grad_norms_at_init"][f"{variant} @ {depth}"]
            row.append(f"{norms[-1] / norms[0]:.2f}")
            rows.append(row)
    runs_table = common.markdown_table(
        ["layers", "variant", "val loss, warmup", "diverged", "val loss, no warmup", "diverged",
         "grad norm last/first layer at init"], rows,
        f"d_model {s['d_model']}, {s['n_head']} heads, SOTU with the 8k sentencepiece vocabulary, "
        f"{s['steps']} steps of {s['batch_size']} x {s['seq_len']} tokens, AdamW peak lr {s['learning_rate']}, "
        f"cosine decay, warmup {int(s['warmup_frac'] * 100)}% of the steps or none, no dropout; "
        f"mean ± half-range over seeds {list(s['seeds'])}; validation loss in nats/token on "
        f"{'the whole validation split' if s['eval_batches'] is None else str(s['eval_batches']) + ' batches'}.",
    )
    presets = common.markdown_table(
        ["preset", "vocabulary", "context", "pre-LN", "final LN", "scaled residual init"],
        [[name, f"{p['vocab_size']:,}", p["context"], p["pre_ln"], p["final_ln"], p["scale_residual_init"]]
         for name, p in result["presets"].items()],
    )
    deepest = max(s["depths"])
    low_lr = common.markdown_table(
        ["variant", f"val loss, lr {s['low_learning_rate']}", f"val loss, lr {s['learning_rate']}"],
        [[variant, common.mean_spread(r["validation_loss"] for r in result["low_lr_runs"] if r["variant"] == variant),
          common.mean_spread(r["validation_loss"] for r in result["runs"] if r["variant"] == variant
                             and r["depth"] == deepest and r["warmup"])] for variant in LOW_LR_VARIANTS],
        f"{deepest} layers, with warmup, otherwise as above. All runs of this question took "
        f"{result['seconds'] / 60:.0f} minutes of wall time.",
    )
    return {"q1-runs": runs_table, "q1-presets": presets, "q1-low-lr": low_lr}
