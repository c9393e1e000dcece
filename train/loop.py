"""The training loop: data -> jitted step on a device mesh -> metrics and orbax checkpoints.

``train(config)`` starts a run or resumes the one in ``config.workdir`` from its latest
checkpoint (parameters, optimizer state, step, data position; dropout keys are derived from the
step), so a run killed at any point and restarted ends with the same parameters as one never
interrupted. SIGTERM, the preemption notice on TPU VMs, saves a checkpoint and returns.
"""

from __future__ import annotations

import math
import signal
import time

import jax
import numpy as np
import optax
from tqdm import tqdm

import models
import optim
from train import sharding
from train.checkpoint import Checkpoints
from train.config import TrainConfig
from train.data.tokenizers import load_tokenizer, tokenizer_id
from train.evaluation import evaluate
from train.metrics import MetricWriter, plot_loss_curve
from train.step import init_state, make_eval_step, make_train_step
from train.tasks import check_fit, make_task


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


class _Preemption:
    """Turns SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._previous)


def train(config: TrainConfig) -> dict:
    """Run (or resume) training; returns a summary with the final metrics."""
    tokenizer = load_tokenizer(config.tokenizer)
    module, model_config = models.create(config.model, **config.model_overrides)
    check_fit(tokenizer, model_config, config.seq_len)
    process_index, process_count = jax.process_index(), jax.process_count()
    if config.batch_size % (process_count * config.grad_accum):
        raise ValueError(
            f"batch_size={config.batch_size} must divide into {process_count} hosts x {config.grad_accum} "
            "accumulation steps"
        )
    per_host = config.batch_size // process_count
    micro = per_host // config.grad_accum

    schedule = optim.SCHEDULES[config.lr_schedule](
        config.learning_rate, config.warmup_steps, config.steps, config.end_lr_ratio
    )
    tx = optim.adamw(schedule, weight_decay=config.weight_decay, b1=config.b1, b2=config.b2, clip_norm=config.clip_norm)
    if config.pruning:  # last in the chain: it zeroes the final updates of the masked weights
        stacked = r"(^|/)blocks/" if model_config.scan_layers else None  # a leading layers axis
        tx = optax.chain(tx, optim.magnitude_pruning(config.pruning_config(), stacked=stacked))
    mesh = sharding.make_mesh(config.mesh)
    task = make_task(config, tokenizer, tokenizer_id(config.tokenizer))
    train_corpus = task.load_corpus(config.train_data, "train")
    eval_corpus = task.load_corpus(config.eval_data, "validation") if config.eval_data else None
    batches = task.train_batches(train_corpus, per_host, process_index, process_count)
    # Everything above validated the config: only now claim (or check) the run folder.
    checkpoints = Checkpoints(
        config.workdir, config.identity(), model_config, keep=config.keep_checkpoints,
        async_save=config.async_checkpoints,
    )
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    state, shardings = init_state(module, tx, init_rng, mesh)
    start, restored = 0, checkpoints.restore_latest(state)
    if restored:
        start, state, data_state = restored
        batches.restore(data_state)
    train_step = make_train_step(module, task, tx, dropout_rng, shardings, mesh, config.grad_accum)
    eval_step = make_eval_step(module, task, shardings.params, mesh)
    writer = MetricWriter(config.workdir, enabled=process_index == 0)
    batch_sharding = sharding.batch_sharding(mesh, leading=1)

    def run_eval(step):
        if eval_corpus is None:
            return None
        metrics = evaluate(eval_step, state.params, task, task.eval_batches(eval_corpus, micro, process_index, process_count),
                           mesh, config.eval_max_batches)
        writer.write(step, "validation", metrics)
        return metrics

    summary = {"workdir": str(config.workdir), "start_step": start, "params": models.count_params(state.params)}
    window, window_start, compile_s = [], time.perf_counter(), None
    bar = tqdm(total=config.steps, initial=start, disable=not config.progress_bar or process_index, unit="step")
    step, eval_metrics = start, None
    with _Preemption() as preemption:
        while step < config.steps:
            local = jax.tree.map(lambda x: x.reshape(config.grad_accum, micro, *x.shape[1:]), next(batches))
            t0 = time.perf_counter()
            state, sums = train_step(state, sharding.global_batch(local, batch_sharding))
            grad_norm = float(sums.pop("grad_norm"))
            metrics = task.summarize(sums)
            step += 1
            if compile_s is None:  # the first step includes compilation: keep it out of tokens/s
                compile_s = time.perf_counter() - t0
                window_start = time.perf_counter()
            if not math.isfinite(metrics["loss"]) or not math.isfinite(grad_norm):
                checkpoints.wait()
                raise NonFiniteLoss(
                    f"non-finite loss ({metrics['loss']}) at step {step}; stopped without saving. "
                    f"The last good checkpoint is step {checkpoints.latest_step()} in {config.workdir}. "
                    "Lower the learning rate or check the data, then resume."
                )
            window.append((metrics["loss"], metrics["tokens"], grad_norm))
            bar.update(1)
            if step % config.log_every == 0 or step == config.steps:
                elapsed = time.perf_counter() - window_start
                tokens = sum(w[1] for w in window) * process_count
                row = {
                    "loss": float(np.mean([w[0] for w in window])),
                    "grad_norm": float(np.mean([w[2] for w in window])),
                    "lr": float(schedule(step - 1)),
                    "tokens_per_sec": tokens / elapsed if elapsed > 0 else None,
                }
                writer.write(step, "train", row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_sec'] or 0:.0f}")
                window, window_start = [], time.perf_counter()
            if step % config.eval_every == 0 or step == config.steps:
                eval_metrics = run_eval(step)
            if step % config.checkpoint_every == 0 or step == config.steps or preemption.requested:
                checkpoints.save(step, state, batches.state())
            if preemption.requested:
                summary["preempted"] = True
                break
    bar.close()
    checkpoints.wait()
    checkpoints.close()
    writer.close()
    summary.update(step=step, compile_seconds=compile_s, validation=eval_metrics)
    if process_index == 0 and not summary.get("preempted"):
        summary["loss_curve"] = str(plot_loss_curve(config.workdir))
    return summary
