"""The training loop: data -> jitted step on a device mesh -> metrics and orbax checkpoints.

``train(config)`` starts a run or resumes the one in ``config.run_dir`` from its latest
checkpoint (parameters, optimizer state, step, data position; dropout keys are derived from the
step), so a run killed at any point and restarted ends with the same parameters as one never
interrupted. SIGTERM, the preemption notice on TPU VMs, saves a checkpoint and returns; Ctrl-C
(SIGINT) in a single process saves one and raises ``Interrupted``.

The host never waits on the device between steps: each step is queued, and the next batch is
prepared while it runs. Metrics stay on the device until every ``log.every`` steps (and before
every checkpoint, so that no checkpoint holds parameters from a non-finite step), when they are
fetched and checked together. With several processes (``train.distributed``) each reads only
its block of every batch and writes only its shards of each checkpoint; process 0 alone writes
metrics, the progress bar and the loss curve.

The work splits in two: ``Run.setup(config)`` checks everything it can before the first step
(the tokenizer against the model, the mesh against the devices and the batch, the model against
the mesh, the data, the optimizer, the run folder) and builds the state; ``Run.loop()`` trains.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

import models
from models import lora
from optim.pruning import sparsity_report
from train import distributed, sharding
from train.checkpoint import Checkpoints
from train.config import TrainConfig
from train.data.tokenizers import load_tokenizer, tokenizer_id
from train.evaluation import evaluate
from train.finetuning import init_params, load_pretrained, make_optimizer, trainable, write_report
from train.metrics import MetricWriter, plot_loss_curve
from train.step import boxed_param_shapes, init_state, make_eval_step, make_train_step
from train.task_registry import make_task
from train.tasks import check_fit


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after it saved the current step, so that rerunning the same
    command resumes; its message says so (the command line exits with status 0)."""


class _Preemption:
    """SIGTERM, the preemption notice on TPU VMs, and in a single process SIGINT (Ctrl-C) stop
    the loop after a step, which is saved.

    One process turns either signal into a flag (SIGINT only once: a second Ctrl-C, e.g. during
    a long save, interrupts as usual; an ignored SIGINT stays ignored). With several processes
    JAX's preemption service catches SIGTERM instead and names a step at which every process
    stops, so that all of them save the same step.
    """

    def __init__(self):
        self.received = None  # the signal that asked to stop
        self.multi = jax.process_count() > 1

    def __enter__(self):
        if not self.multi:
            signals = [signal.SIGTERM]
            if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
                signals.append(signal.SIGINT)
            self._previous = {s: signal.signal(s, self._handle) for s in signals}
        return self

    def _handle(self, signum, frame):
        self.received = signum
        if signum == signal.SIGINT:
            signal.signal(signum, self._previous[signum])

    def reached(self, step: int) -> bool:
        """Whether to save and stop after ``step``; every process must ask at every step."""
        return multihost_utils.reached_preemption_sync_point(step) if self.multi else self.received is not None

    def __exit__(self, *exc):
        if not self.multi:
            for s, handler in self._previous.items():
                signal.signal(s, handler)


def _all_data_states(state: dict, per_process: bool):
    """What a checkpoint stores of the data position: the packed pipelines' state is the same on
    every process; a stream's position is each process's own, so all of them are gathered."""
    if per_process and jax.process_count() > 1:
        return {"per_process": distributed.gather_json(state)}
    return state


def _own_data_state(saved: dict) -> dict:
    """This process's data position from what :func:`_all_data_states` stored."""
    if "per_process" not in saved:
        return saved
    states = saved["per_process"]
    if len(states) != jax.process_count():
        raise ValueError(
            f"the checkpoint holds the stream positions of {len(states)} processes but this run has "
            f"{jax.process_count()}: resume a streaming run with as many processes as it was saved with"
        )
    return states[jax.process_index()]


log = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
    """A run set up and checked, ready for its first (or next) step."""

    config: TrainConfig
    task: Any
    mesh: Any
    module: Any
    batches: Any  # the training batches of this process, positioned after the restored step
    eval_corpus: Any
    micro: int  # rows per process and accumulation step
    data_split: tuple[int, int]  # (this process's block of each batch, blocks)
    schedule: Any
    checkpoints: Checkpoints
    state: Any
    train_step: Any
    eval_step: Any
    start: int
    summary: dict

    @classmethod
    def setup(cls, config: TrainConfig) -> "Run":
        """Build and check everything the loop needs; cheap checks first, the data last but one,
        the run folder last (only a run that can start claims it)."""
        data = config.data
        tokenizer = load_tokenizer(data.tokenizer)
        check_fit(tokenizer, config.model, data.seq_len)
        mesh = sharding.make_mesh(config.mesh.sizes())
        sharding.check_batch(data.batch_size, data.grad_accum, dict(mesh.shape))
        sharding.check_divisible(boxed_param_shapes(config.model.module()), dict(mesh.shape))
        pretrained = load_pretrained(config.init_from, config.model, data.tokenizer) if config.init_from else None
        # This process feeds one block of each batch's rows, and reads only those.
        data_index, data_count = sharding.batch_split(mesh)
        micro = data.batch_size // data.grad_accum // data_count
        task = make_task(config, tokenizer, tokenizer_id(data.tokenizer))
        train_corpus = task.load_corpus(data.train, "train")
        eval_corpus = task.load_corpus(data.eval, "validation") if data.eval else None
        batches = task.train_batches(train_corpus, micro * data.grad_accum, data_index, data_count)
        model_config = task.model_config(config.model)  # a classifier knows its classes from the data
        module = model_config.module()
        sharding.check_divisible(boxed_param_shapes(module), dict(mesh.shape))
        tx, schedule = make_optimizer(config, model_config, getattr(batches, "batches_per_epoch", None))
        checkpoints = Checkpoints(config.run_dir, config, model_config, keep=config.checkpoint.keep,
                                  async_save=config.checkpoint.async_save)
        init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))
        state, shardings = init_state(module, tx, init_rng, mesh)
        summary = {"run_dir": str(config.run_dir)}
        start, restored = 0, checkpoints.restore_latest(state)
        if restored:
            start, state, data_state = restored
            batches.restore(_own_data_state(data_state))
            _say_what_resuming_changes(checkpoints.previous, config, start)
        elif pretrained is not None:
            params, report = init_params(pretrained, model_config, state.params)
            state = state.replace(params=jax.device_put(params, shardings.params))
            if jax.process_index() == 0:
                write_report(config.run_dir, report)
            summary["init_from"] = {"source": report["source"], "loaded": len(report["loaded"]), "new": report["new"],
                                    "unused": report["unused"]}
        can_train = trainable(config, model_config, state.params)
        train_step = make_train_step(module, task, tx, dropout_rng, shardings, mesh, data.grad_accum, can_train)
        eval_step = make_eval_step(module, task, {"params": shardings.params, **shardings.model_state}, mesh)
        summary.update(start_step=start, params=models.count_params(state.params), mesh=dict(mesh.shape),
                       processes=jax.process_count())
        if lora.adapter_config(model_config).lora_rank:  # the adapters and a classifier's head: all that trains
            summary["trainable_params"] = sum(int(x.size) for x, t in zip(jax.tree.leaves(state.params),
                                                                          jax.tree.leaves(can_train)) if t)
        return cls(config, task, mesh, module, batches, eval_corpus, micro, (data_index, data_count), schedule,
                   checkpoints, state, train_step, eval_step, start, summary)

    def loop(self) -> dict:
        """Train from ``start`` to ``config.steps``; returns the summary with the final metrics."""
        config, task, checkpoints = self.config, self.task, self.checkpoints
        primary = jax.process_index() == 0
        writer = MetricWriter(config.run_dir, enabled=primary)
        batch_sharding = sharding.batch_sharding(self.mesh, leading=1)
        grad_accum, micro = config.data.grad_accum, self.micro

        def next_batch():
            local = jax.tree.map(lambda x: x.reshape(grad_accum, micro, *x.shape[1:]), next(self.batches))
            return sharding.global_batch(local, batch_sharding)

        def run_eval(step):
            if self.eval_corpus is None:
                return None
            metrics = evaluate(self.eval_step, self.state.variables(), task,
                               task.eval_batches(self.eval_corpus, micro, *self.data_split), self.mesh,
                               config.log.eval_max_batches)
            writer.write(step, "validation", metrics)
            return metrics

        pending = []  # (step, metrics still on the device) of the steps not yet checked

        def fetch_pending() -> list[tuple[float, int, float]]:
            """Wait for the pending steps, stop on a non-finite one, and return their (loss, tokens,
            grad norm). Runs before every checkpoint, so none holds parameters from a bad step."""
            out = []
            for at, sums in jax.device_get(pending):
                grad_norm = float(sums.pop("grad_norm"))
                metrics = task.summarize(sums)
                if not math.isfinite(metrics["loss"]) or not math.isfinite(grad_norm):
                    checkpoints.wait()
                    raise NonFiniteLoss(
                        f"non-finite loss ({metrics['loss']}) or gradient norm ({grad_norm}) at step {at}; stopped "
                        f"without saving. The last good checkpoint is step {checkpoints.latest_step()} in "
                        f"{config.run_dir}. Lower optimizer.learning_rate or check the data, then resume."
                    )
                out.append((metrics["loss"], metrics["tokens"], grad_norm))
            pending.clear()
            return out

        window, window_start, compile_s = [], time.perf_counter(), None
        bar = tqdm(total=config.steps, initial=self.start, disable=not config.log.progress_bar or not primary,
                   unit="step")
        step, eval_metrics, summary = self.start, None, self.summary
        batch = next_batch() if step < config.steps else None
        with _Preemption() as preemption:
            while step < config.steps:
                t0 = time.perf_counter()
                self.state, sums = self.train_step(self.state, batch)  # queued: the device runs it, the host goes on
                step += 1
                pending.append((step, sums))
                if compile_s is None:  # the first step includes compilation: keep it out of tokens/s
                    jax.block_until_ready(sums)
                    compile_s = time.perf_counter() - t0
                    window_start = time.perf_counter()
                stop = preemption.reached(step)
                save = step % config.checkpoint.every == 0 or step == config.steps or stop
                data_state = self.batches.state() if save else None  # the position after this step's batch
                if step < config.steps and not stop:
                    batch = next_batch()
                bar.update(1)
                log_now = step % config.log.every == 0 or step == config.steps
                if log_now or save:
                    window += fetch_pending()
                if log_now:
                    elapsed = time.perf_counter() - window_start
                    row = {
                        "loss": float(np.mean([w[0] for w in window])),
                        "grad_norm": float(np.mean([w[2] for w in window])),
                        "lr": float(self.schedule(step - 1)),
                        "tokens_per_sec": sum(w[1] for w in window) / elapsed if elapsed > 0 else None,
                        **self._sparsity(),
                    }
                    writer.write(step, "train", row)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_sec'] or 0:.0f}")
                    window, window_start = [], time.perf_counter()
                if step % config.log.eval_every == 0 or step == config.steps:
                    eval_metrics = run_eval(step)
                if save:
                    checkpoints.save(step, self.state, _all_data_states(data_state, config.data.streaming))
                if stop:
                    summary["preempted"] = True
                    break
        bar.close()
        checkpoints.wait()
        checkpoints.close()
        writer.close()
        if summary.get("preempted") and preemption.received == signal.SIGINT:
            raise Interrupted(f"interrupted at step {step}: saved; rerun the same command to resume")
        summary.update(step=step, compile_seconds=compile_s, validation=eval_metrics, **self._sparsity())
        if primary and not summary.get("preempted"):
            summary["loss_curve"] = str(plot_loss_curve(config.run_dir))
        return summary

    def _sparsity(self) -> dict:
        """The pruned weights' zero fraction (``optimizer.pruning``), for the metrics and the summary."""
        pruning = self.config.optimizer.pruning
        if pruning is None:
            return {}
        report = sparsity_report(jax.device_get(self.state.params), pruning.pattern)
        return {"sparsity": report["pruned_sparsity"], "overall_sparsity": report["overall_sparsity"]}


def _say_what_resuming_changes(previous: TrainConfig | None, config: TrainConfig, start: int) -> None:
    """A resumed run may change its length: say in one line what that does to the schedule."""
    if previous is None or previous.steps == config.steps:
        return
    opt = config.optimizer
    shape = "" if opt.schedule == "constant" else (
        f"; the {opt.schedule} learning-rate schedule is now laid over {config.steps} steps from step {start} on")
    log.warning("resuming %s at step %d with steps=%d (it was saved with steps=%d)%s",
                config.run_dir, start, config.steps, previous.steps, shape)


def train(config: TrainConfig) -> dict:
    """Run (or resume) training; returns a summary with the final metrics."""
    return Run.setup(config).loop()
