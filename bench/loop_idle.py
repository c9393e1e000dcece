"""How long the device waits on the host between training steps.

Mode ``loop-idle`` trains a config with ``train.loop.train`` (in a temporary run folder, one log
window over every step after the first, no evaluation, one checkpoint at the end) and reads the
loop's steady step time from its tokens/s. It then builds the same train step (same model,
batch and dropout; ``bench.train_step.prepare_ours``) on a batch already on the device and times
``device_step_s``: steps queued back to back, the last one waited for, divided by their number
(the median of 5 such runs): the time the device needs per step when the host never makes it
wait. ``blocking_step_s`` is the median of single steps each waited for, what a loop that reads
a metric after every step cannot go below. ``idle_per_step_s`` = loop step - device step: the
device's idle time per step, while the host converts metrics, logs or prepares the next batch
with no step queued.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from bench.measure import CpuContention, environment
from bench.spec import BenchSpec
from bench.train_step import prepare_ours
from train.loop import train
from train.metrics import read_metrics


def measure_loop_idle(config, bare_steps: int = 20) -> dict:
    """The loop's step time on the run config ``config``, the device's step time and the idle time
    per step, in seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        run = config.replace({
            "run_dir": str(Path(tmp) / "run"), "data.eval": None, "log.every": config.steps,
            "checkpoint.every": config.steps, "checkpoint.async_save": False, "log.progress_bar": False,
        })
        contention = CpuContention()
        contention.start()
        t0 = time.perf_counter()
        train(run)
        loop_wall = time.perf_counter() - t0
        loop_others = contention.stop()
        (row,) = [r for r in read_metrics(run.run_dir) if r["split"] == "train"]
    data = config.data
    loop_step = data.batch_size * data.seq_len / row["tokens_per_sec"]

    spec = BenchSpec(model=config.model, seq_len=data.seq_len, batch_size=data.batch_size, dropout="on",
                     steps=bare_steps, warmup=2)
    bare = prepare_ours(spec)
    blocking = [bare.step() for _ in range(bare_steps)]
    blocking_step = statistics.median(s["time"] for s in blocking)
    queued = []
    for _ in range(5):
        contention = CpuContention()
        contention.start()
        t0 = time.perf_counter()
        for _ in range(bare_steps - 1):
            bare.call(wait=False)
        bare.call()  # steps run in order: this one returns when all have
        queued.append(((time.perf_counter() - t0) / bare_steps, contention.stop()))
    device_step = statistics.median(t for t, _ in queued)
    others = [o for o in [s["other_cores"] for s in blocking] + [o for _, o in queued] if o is not None]
    return {
        "mode": "loop-idle",
        "config": config.to_dict(),
        "model": type(config.model).__name__,
        "batch": [data.batch_size, data.seq_len],
        "loop_steps_timed": config.steps - 1,
        "loop_step_s": loop_step,
        "device_step_s": device_step,
        "blocking_step_s": blocking_step,
        "idle_per_step_s": loop_step - device_step,
        "idle_fraction": (loop_step - device_step) / loop_step,
        "loop_wall_s_with_compile": loop_wall,
        "other_processes_cpu_cores": {"loop": loop_others, "bare_steps": statistics.fmean(others) if others else None},
        "environment": environment(),
    }

