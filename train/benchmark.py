"""Train-step benchmark: our jitted step, timed as the training loop runs it, optionally side by
side with transformers' Flax GPT-2 and PyTorch GPT-2 train steps measured in the same invocation.

What is timed
    The step the loop builds: ``models.create`` -> ``optim.adamw`` (clipping, decoupled weight
    decay, warmup-cosine schedule) -> ``train.step.init_state`` + ``make_train_step`` on a one-device
    mesh (``train.sharding``), fed random int32 token batches ``[1, batch, seq]`` (no accumulation).
    The step is lowered and compiled ahead of time (``compile_s``: trace + XLA compile), run
    ``warmup`` times untimed, then ``steps`` times, each call timed on its own up to
    ``block_until_ready`` of the new state. ``step_s`` is the median of those; ``tokens_per_s`` is
    ``batch * seq / step_s``. ``step_cpu_user_s`` / ``step_cpu_system_s`` are this process's CPU
    seconds per step (system time is mostly page faults on freshly mapped temporaries), and
    ``other_processes_cpu_cores`` is how many cores other processes used during its steps, on
    average: on a shared machine anything above ~0.1 makes the wall times suspect.

Model FLOPs per token (``flops_per_token``; the same count for every contender)
    ``6 * N + 12 * n_layer * d_model * seq``, where
    - ``N`` = the non-embedding parameters (every parameter of the blocks and the final LayerNorm:
      matrices, biases and LayerNorm gains alike) + ``d_model * vocab`` for the tied output
      projection (the logits matmul reuses the token table, so it is counted once as a matmul;
      the embedding lookups, token and position, are not counted);
    - ``6 * N``: 2 FLOPs per multiply-add forward, 4 backward (gradients of activations and of
      weights);
    - ``12 * n_layer * d_model * seq``: attention's ``Q K^T`` and ``A V`` (``2 * 2 * seq * d_model``
      forward per token and layer, times 3 for forward + backward), counted over the full square
      as in the PaLM paper's MFU (the causal mask's skipped half is not subtracted).
    Elementwise work (softmax, GELU, LayerNorm, the optimizer update) is not counted.
    ``mfu = flops_per_token * tokens_per_s / peak``. The peak is ``--peak-tflops`` when given;
    otherwise the best fp32 (the benchmark dtype) FLOP/s that XLA reaches on a large square
    matmul in the same process (``peak_source`` says which).

Peak memory
    On accelerators, the device's ``memory_stats()["peak_bytes_in_use"]``. On CPU (no device
    statistics), the process's resident-set high-water mark (``VmHWM``, reset through
    ``/proc/self/clear_refs`` right before the contender starts, after ``malloc_trim``, so earlier
    work does not count) minus the resident set at that moment: ``peak_rss_delta_bytes`` covers
    init + compile + steps, ``steps_peak_rss_delta_bytes`` the high-water mark of the timed steps
    alone (heap trimmed and mark reset after the warmup) over the same baseline, i.e. the steady
    training footprint (state, gradients, activations). ``xla_memory`` adds XLA's own buffer
    accounting of the compiled step (arguments, outputs, aliased, temporaries).

References (``compare``)
    Same config (random init), shape, fp32, AdamW hyper-parameters (b1, b2, eps, weight decay on
    the matrices only, global-norm clipping 1.0, the same warmup-cosine schedule) and the same
    dropout choice (``off`` by default: every dropout rate 0; ``on``: the preset's rates in all
    three), with a token-level cross-entropy over integer labels:
    - ``flax_reference``: transformers 4.57.6 ``FlaxGPT2LMHeadModel`` (the last transformers with
      Flax models), ``jax.value_and_grad`` + ``optax`` AdamW, one jitted step with params and
      optimizer state donated; it runs in a separate virtual environment with the same jax
      (``reference_python`` creates it) through :func:`flax_reference_step` below, so the harness
      is ours.
    - ``torch_reference``: transformers ``GPT2LMHeadModel`` (eager, its default attention), the
      main environment's torch, ``torch.optim.AdamW``, ``clip_grad_norm_``, ``model.train()``,
      ``torch.set_num_threads(<cores>)``; in a subprocess of the main environment, so its memory is
      measured alone.
    Each contender has its own process (ours the calling one). All three are compiled and warmed
    up first; then each round times one step of every contender in turn (the lead rotating), never
    two at once, so a change in the machine's speed during the run hits them alike. ``ratios``
    are their median step time over ours, ``paired_ratios`` the median over rounds of the
    per-round ratio (> 1: ours is faster).

Memory allocator
    ``scripts/benchmark.py`` (like ``scripts/train.py``) first calls
    :func:`train.malloc.retain_freed_memory`, which keeps freed memory in the process instead of
    page-faulting XLA's temporaries in at every step; ``allocator`` in each contender's result
    says what its process used. The references keep their default allocator unless
    ``--reference-allocator retained``.
"""

from __future__ import annotations

if __name__ == "__main__":  # a reference worker (see Worker): malloc before numpy and JAX start threads
    from train.malloc import retain_freed_memory

    WORKER_ALLOCATOR = retain_freed_memory()

import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE_VENV = REPO_ROOT / ".cache" / "bench-venv"
REFERENCE_TRANSFORMERS = "4.57.6"
RESULT_TAG = "BENCHMARK_RESULT "
DROPOUT_FIELDS = ("embd_dropout", "attn_dropout", "resid_dropout")


@dataclasses.dataclass
class BenchSpec:
    """What to measure. Optimizer defaults are ``train.config.TrainConfig``'s."""

    model: str = "gpt2"
    seq_len: int = 256
    batch_size: int = 2
    dtype: str = "float32"
    steps: int = 5
    warmup: int = 1
    dropout: str = "off"  # "off": all dropout rates 0 (in every contender); "on": the preset's rates
    model_overrides: dict = dataclasses.field(default_factory=dict)
    learning_rate: float = 3e-4
    warmup_steps: int = 100
    total_steps: int = 1000
    end_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.dropout not in ("off", "on"):
            raise ValueError(f"dropout={self.dropout!r}; choose 'off' or 'on'")
        for name in ("seq_len", "batch_size", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.warmup < 0:
            raise ValueError(f"warmup={self.warmup} must be at least 0")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# FLOPs, peak, memory, timing: shared by every contender (the reference workers import these).


def flops_per_token(*, n_layer: int, d_model: int, vocab_size: int, seq_len: int, non_embedding_params: int) -> dict:
    """Model FLOPs per trained token (forward + backward); see the module docstring."""
    n = non_embedding_params + d_model * vocab_size
    dense = 6 * n
    attention = 12 * n_layer * d_model * seq_len
    return {
        "flops_per_token": dense + attention,
        "formula": "6*N + 12*n_layer*d_model*seq_len",
        "N": n,
        "N_counts": "non-embedding params (blocks + final LayerNorm, biases and gains included) "
                    "+ d_model*vocab for the tied output projection; embedding lookups not counted",
        "non_embedding_params": non_embedding_params,
        "output_projection_params": d_model * vocab_size,
        "dense_flops_per_token": dense,
        "attention_flops_per_token": attention,
    }


def model_flops(config, seq_len: int) -> dict:
    """:func:`flops_per_token` for one of our GPT configs, N counted from its parameter shapes."""
    import models

    shapes = models.param_shapes(config.module())
    non_embedding = sum(int(np.prod(x.shape)) for k, v in shapes.items() if k not in ("wte", "wpe")
                        for x in _leaves(v))
    return flops_per_token(n_layer=config.n_layer, d_model=config.d_model, vocab_size=config.vocab_size,
                           seq_len=seq_len, non_embedding_params=non_embedding)


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def matmul_peak_flops(dtype: str = "float32", n: int | None = None, repeats: int = 10) -> dict:
    """The best FLOP/s of an ``n x n @ n x n`` matmul under ``jax.jit`` on the default device."""
    import jax
    import jax.numpy as jnp

    if n is None:
        n = 2048 if jax.default_backend() == "cpu" else 8192
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.dtype(dtype))
    b = jax.random.normal(kb, (n, n), jnp.dtype(dtype))
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return {"flops_per_s": 2 * n**3 / min(times), "n": n, "dtype": dtype, "repeats": repeats}


def torch_matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    """The same measurement with torch (fp32), for comparing the libraries' matmuls."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times)


def _proc_status(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class HostMemory:
    """Peak resident-set growth of this process over a stretch of work (Linux ``/proc``)."""

    def __init__(self):
        self.baseline = None
        self.resettable = False

    def _reset_peak(self) -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            return True
        except OSError:
            return False

    def _peak(self) -> int:
        peak = _proc_status("VmHWM")
        if peak is None:  # no /proc: ru_maxrss (kilobytes on Linux, bytes on macOS)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak *= 1 if sys.platform == "darwin" else 1024
        return peak

    def start(self) -> None:
        release_free_memory()
        self.resettable = self._reset_peak()
        self.baseline = _proc_status("VmRSS") or self._peak()

    def checkpoint(self) -> int:
        """Peak growth over the baseline since the last reset; then trim the heap and reset."""
        delta = self._peak() - self.baseline
        release_free_memory()
        self._reset_peak()
        return delta


def release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``), so the resident set tracks live
    memory rather than what the allocator kept from earlier work (compilation, the first step)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class CpuContention:
    """CPU time that other processes used while this one was measured (from ``/proc/stat``), in
    cores: the machine is shared, and anything above ~0.1 core makes the wall times suspect."""

    def _busy_s(self) -> float | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def _own_s(self) -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def start(self) -> None:
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy_s(), self._own_s()

    def stop(self) -> float | None:
        busy, wall = self._busy_s(), time.perf_counter() - self.t0
        if busy is None or self.busy0 is None or wall <= 0:
            return None
        return max(busy - self.busy0 - (self._own_s() - self.own0), 0.0) / wall


def xla_memory(compiled) -> dict | None:
    """XLA's own buffer accounting of a compiled step (bytes)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001  (not every backend implements it)
        return None
    if m is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes")
    out = {f: int(getattr(m, f)) for f in fields if hasattr(m, f)}
    if {"argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes"} <= set(out):
        out["total_live_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                                   - out["alias_size_in_bytes"] + out["temp_size_in_bytes"])
    return out


def device_peak_bytes() -> int | None:
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _cpu_times() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def time_call(call: Callable[[], Any]) -> dict:
    """One call (which must block on its result): wall time, this process's CPU seconds (user,
    system) and the other processes' CPU use meanwhile, in cores."""
    contention = CpuContention()
    contention.start()
    u0, s0 = _cpu_times()
    t0 = time.perf_counter()
    call()
    wall = time.perf_counter() - t0
    u1, s1 = _cpu_times()
    return {"time": wall, "user": u1 - u0, "system": s1 - s0, "other_cores": contention.stop()}


def summarize_times(samples: list[dict], tokens_per_step: int) -> dict:
    times = [x["time"] for x in samples]
    others = [x["other_cores"] for x in samples if x["other_cores"] is not None]
    median = statistics.median(times)
    return {
        "other_processes_cpu_cores": statistics.fmean(others) if others else None,
        "step_cpu_user_s": statistics.median(x["user"] for x in samples),
        "step_cpu_system_s": statistics.median(x["system"] for x in samples),
        "step_s": median,
        "step_s_mean": statistics.fmean(times),
        "step_s_min": min(times),
        "step_s_max": max(times),
        "step_times_s": times,
        "tokens_per_s": tokens_per_step / median,
    }


class Contender:
    """A compiled train step ready to time. ``call()`` runs one step and blocks on it;
    ``describe()`` returns what the result reports besides the times (set-up costs, last loss).
    Creating one runs the untimed warm-up steps."""

    def __init__(self, call: Callable[[], None], describe: Callable[[], dict], memory: HostMemory, warmup: int):
        self.call, self.describe, self.memory = call, describe, memory
        for _ in range(warmup):
            call()
        self.setup_peak = memory.checkpoint()
        self.samples: list[dict] = []

    def step(self) -> dict:
        sample = time_call(self.call)
        self.samples.append(sample)
        return sample

    def result(self, spec: BenchSpec, flops: dict, peak_flops_per_s: float | None) -> dict:
        steps_peak = self.memory.checkpoint()
        out = {
            **self.describe(),
            **summarize_times(self.samples, spec.tokens_per_step),
            "peak_rss_delta_bytes": max(self.setup_peak, steps_peak),
            "steps_peak_rss_delta_bytes": steps_peak,
        }
        return add_mfu(out, flops, peak_flops_per_s)


def add_mfu(result: dict, flops: dict, peak_flops_per_s: float | None) -> dict:
    achieved = flops["flops_per_token"] * result["tokens_per_s"]
    result["model_flops_per_s"] = achieved
    result["mfu"] = achieved / peak_flops_per_s if peak_flops_per_s else None
    return result


def random_tokens(spec: BenchSpec, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-token targets, int32 ``[batch, seq]``, from one random block per row."""
    block = np.random.default_rng(spec.seed).integers(0, vocab_size, (spec.batch_size, spec.seq_len + 1))
    block = block.astype(np.int32)
    return np.ascontiguousarray(block[:, :-1]), np.ascontiguousarray(block[:, 1:])


def warmup_cosine_fn(spec: BenchSpec):
    """The learning-rate schedule of ``optim.warmup_cosine`` as an optax schedule (reference side)."""
    import optax

    return optax.warmup_cosine_decay_schedule(
        0.0, spec.learning_rate, spec.warmup_steps, max(spec.total_steps, 1), spec.learning_rate * spec.end_lr_ratio
    )


# --------------------------------------------------------------------------------------------
# Our step.


def our_config(spec: BenchSpec):
    import models

    overrides = dict(spec.model_overrides)
    overrides.setdefault("dtype", spec.dtype)
    if spec.dropout == "off":
        for name in DROPOUT_FIELDS:
            overrides.setdefault(name, 0.0)
    base = models.get_config(spec.model)
    if getattr(base, "family", None) != "gpt":
        gpt = sorted(name for name, c in models.PRESETS.items() if getattr(c, "family", None) == "gpt")
        raise ValueError(f"the train-step benchmark times the causal LM step of the GPT family; {spec.model!r} is a "
                         f"{getattr(base, 'family', '?')} preset. GPT presets: {', '.join(gpt)}")
    module, config = models.create(spec.model, **overrides)
    if spec.seq_len > config.n_positions:
        raise ValueError(f"seq_len={spec.seq_len} exceeds {spec.model}'s context of {config.n_positions}")
    return module, config


def one_device_mesh():
    """A ``data`` x ``model`` mesh of one device (``make_mesh`` when there is only one)."""
    import jax
    from jax.sharding import Mesh

    from train import sharding

    if jax.device_count() == 1:
        return sharding.make_mesh({"data": 1, "model": 1})
    return Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "model"))


def prepare_ours(spec: BenchSpec) -> Contender:
    """Our train step, built as ``train.loop.train`` builds it."""
    import jax

    import optim
    from train import sharding
    from train.step import init_state, make_train_step
    from train.tasks import LanguageModeling

    memory = HostMemory()
    memory.start()
    module, config = our_config(spec)
    schedule = optim.warmup_cosine(spec.learning_rate, spec.warmup_steps, spec.total_steps, spec.end_lr_ratio)
    tx = optim.adamw(schedule, weight_decay=spec.weight_decay, b1=spec.b1, b2=spec.b2, eps=spec.eps,
                     clip_norm=spec.clip_norm)
    mesh = one_device_mesh()
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(spec.seed))
    t0 = time.perf_counter()
    state, shardings = init_state(module, tx, init_rng, mesh)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    train_step = make_train_step(module, LanguageModeling, tx, dropout_rng, shardings, mesh, grad_accum=1)
    inputs, targets = random_tokens(spec, config.vocab_size)
    local = {"inputs": inputs[None], "targets": targets[None]}
    batch = sharding.global_batch(local, sharding.batch_sharding(mesh, leading=1))

    t0 = time.perf_counter()
    lowered = train_step.lower(state, batch)
    trace_s = time.perf_counter() - t0
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0

    holder = {"state": state}

    def call():
        new_state, sums = compiled(holder["state"], batch)
        jax.block_until_ready(new_state)
        holder["state"] = new_state
        holder["sums"] = sums

    def describe():
        return {
            "implementation": "ours: models.create + optim.adamw + train.step.make_train_step (jit, donated state)",
            "scan_layers": config.scan_layers,
            "remat": config.remat,
            "init_s": init_s,
            "trace_s": trace_s,
            "compile_s": compile_s,
            "last_loss": float(holder["sums"]["nll"] / holder["sums"]["weight"]),
            "peak_rss_resettable": memory.resettable,
            "device_peak_bytes": device_peak_bytes(),
            "xla_memory": xla_memory(compiled),
        }

    return Contender(call, describe, memory, spec.warmup)


def run_alone(contender: Contender, spec: BenchSpec, flops: dict, peak_flops_per_s: float | None) -> dict:
    for _ in range(spec.steps):
        contender.step()
    return contender.result(spec, flops, peak_flops_per_s)


# --------------------------------------------------------------------------------------------
# References. These run in other processes (the Flax one in another virtual environment) and
# use only numpy, jax, optax, transformers and torch, never our packages.


def hf_gpt2_config(config, dropout: str) -> dict:
    """transformers ``GPT2Config`` fields for one of our (pre-LN, GPT-2) configs."""
    if not config.pre_ln or config.activation != "gelu_tanh":
        raise ValueError("the reference comparison supports the GPT-2 presets (pre-LN, tanh GELU) only")
    rate = (lambda name: getattr(config, name)) if dropout == "on" else (lambda name: 0.0)
    return {
        "vocab_size": config.vocab_size,
        "n_positions": config.n_positions,
        "n_embd": config.d_model,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.d_ff,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": config.layer_norm_eps,
        "initializer_range": config.initializer_range,
        "embd_pdrop": rate("embd_dropout"),
        "attn_pdrop": rate("attn_dropout"),
        "resid_pdrop": rate("resid_dropout"),
        "tie_word_embeddings": True,
    }


def _versions(*names) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def flax_reference_step(spec: BenchSpec, hf_config: dict) -> Contender:
    """transformers' ``FlaxGPT2LMHeadModel`` trained with ``jax.value_and_grad`` + optax AdamW."""
    import jax
    import jax.numpy as jnp
    import optax
    import transformers

    transformers.logging.set_verbosity_error()
    memory = HostMemory()
    memory.start()
    cfg = transformers.GPT2Config(**hf_config)
    model = transformers.FlaxGPT2LMHeadModel(cfg, seed=spec.seed, dtype=jnp.dtype(spec.dtype))
    params = model.params
    train = spec.dropout == "on"

    def decay(tree):  # matrices only, as optim.adamw: no biases, LayerNorm gains or embeddings
        return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "kernel", tree)

    tx = optax.chain(
        optax.clip_by_global_norm(spec.clip_norm),
        optax.adamw(warmup_cosine_fn(spec), b1=spec.b1, b2=spec.b2, eps=spec.eps, weight_decay=spec.weight_decay,
                    mask=decay),
    )

    def loss_fn(params, inputs, targets, rng):
        logits = model(inputs, params=params, dropout_rng=rng if train else None, train=train).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets).mean()

    def step(params, opt_state, inputs, targets, rng):
        loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    t0 = time.perf_counter()
    opt_state = jax.jit(tx.init)(params)
    jax.block_until_ready(opt_state)
    init_s = time.perf_counter() - t0
    inputs, targets = (jnp.asarray(x) for x in random_tokens(spec, cfg.vocab_size))
    rng = jax.random.key(spec.seed + 1)
    jitted = jax.jit(step, donate_argnums=(0, 1))
    t0 = time.perf_counter()
    lowered = jitted.lower(params, opt_state, inputs, targets, rng)
    trace_s = time.perf_counter() - t0
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    holder = {"params": params, "opt_state": opt_state, "i": 0}
    del params, opt_state  # donated to the first step (model.params is invalidated with them)

    def call():
        holder["i"] += 1
        p, o, loss = compiled(holder["params"], holder["opt_state"], inputs, targets,
                              jax.random.fold_in(rng, holder["i"]))
        jax.block_until_ready((p, o))
        holder.update(params=p, opt_state=o, loss=loss)

    def describe():
        return {
            "implementation": f"transformers {transformers.__version__} FlaxGPT2LMHeadModel, jax.value_and_grad + "
                              "optax.adamw, jit with params and opt_state donated",
            "versions": _versions("jax", "jaxlib", "flax", "optax", "transformers", "numpy"),
            "python_executable": sys.executable,
            "init_s": init_s,
            "trace_s": trace_s,
            "compile_s": compile_s,
            "last_loss": float(holder["loss"]),
            "device_peak_bytes": device_peak_bytes(),
            "xla_memory": xla_memory(compiled),
        }

    return Contender(call, describe, memory, spec.warmup)


def torch_reference_step(spec: BenchSpec, hf_config: dict, threads: int | None = None,
                         adamw_impl: str = "fused") -> Contender:
    """transformers' PyTorch ``GPT2LMHeadModel`` with ``torch.optim.AdamW`` (eager, CPU)."""
    import torch
    import torch.nn.functional as F
    import transformers

    transformers.logging.set_verbosity_error()
    memory = HostMemory()
    memory.start()
    threads = threads or cpu_count()
    torch.set_num_threads(threads)
    torch.manual_seed(spec.seed)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[spec.dtype]
    cfg = transformers.GPT2Config(**hf_config)
    t0 = time.perf_counter()
    model = transformers.GPT2LMHeadModel(cfg).to(dtype)
    model.train()  # dropout active exactly when its rates are non-zero (spec.dropout)
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # lm_head.weight is wte.weight: listed once
        (decay if p.dim() == 2 and "wte" not in name and "wpe" not in name else no_decay).append(p)
    kwargs = {"fused": True} if adamw_impl == "fused" else {"foreach": adamw_impl == "foreach"}
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.learning_rate, betas=(spec.b1, spec.b2), eps=spec.eps, **kwargs,
    )
    schedule = warmup_cosine_fn(spec)
    lr_at = [float(schedule(i)) for i in range(spec.warmup + spec.steps + 1)]
    init_s = time.perf_counter() - t0
    inputs, targets = (torch.from_numpy(x).long() for x in random_tokens(spec, cfg.vocab_size))
    holder = {"i": 0}

    def call():
        for group in opt.param_groups:
            group["lr"] = lr_at[holder["i"]]
        holder["i"] += 1
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=inputs).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.clip_norm)
        opt.step()
        holder["loss"] = loss.detach()

    t0 = time.perf_counter()
    call()  # eager: the first step allocates optimizer state and warms the kernels
    first_step_s = time.perf_counter() - t0

    def describe():
        return {
            "implementation": f"transformers {transformers.__version__} GPT2LMHeadModel "
                              f"(attn_implementation={model.config._attn_implementation}), eager, "
                              f"torch.optim.AdamW({adamw_impl}), clip_grad_norm_",
            "versions": _versions("torch", "transformers", "numpy"),
            "threads": torch.get_num_threads(),
            "init_s": init_s,
            "compile_s": None,
            "first_step_s": first_step_s,
            "last_loss": float(holder["loss"]),
            "torch_matmul_flops_per_s": torch_matmul_flops(),
        }

    return Contender(call, describe, memory, max(spec.warmup - 1, 0))


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------
# The reference environment and the worker processes.


def reference_requirements() -> list[str]:
    """Pins of the Flax reference environment: transformers 4.57.6 with our jax, flax and optax.

    flax 0.12.x (ours) was checked to load and train transformers 4.57.6's Flax GPT-2.
    """
    from importlib.metadata import version

    return [
        f"transformers=={REFERENCE_TRANSFORMERS}",
        f"jax=={version('jax')}",
        f"jaxlib=={version('jaxlib')}",
        f"flax=={version('flax')}",
        f"optax=={version('optax')}",
    ]


def _env_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def reference_python(path: str | os.PathLike | None = None, create: bool = True, log=sys.stderr) -> Path:
    """The Python of the Flax reference environment: ``path`` (a venv folder or an interpreter),
    default ``.cache/bench-venv``; a missing venv folder is created with ``python -m venv`` and
    ``pip install`` of :func:`reference_requirements` (needs PyPI)."""
    path = Path(path) if path else DEFAULT_REFERENCE_VENV
    if path.is_file():
        return path
    python = _env_python(path)
    marker = path / "bench-requirements.txt"
    wanted = "\n".join(reference_requirements())
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    if not create:
        raise FileNotFoundError(f"no reference environment at {path}; run with --compare-reference to create it")
    print(f"creating the reference environment in {path}: {wanted.replace(chr(10), ', ')}", file=log, flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    *reference_requirements()], check=True, stdout=log, stderr=log)
    marker.write_text(wanted)
    return python


class Worker:
    """A reference contender in its own process (``python -m train.benchmark <kind>``, run from the
    repository root), stepped on command: one JSON line each way per message."""

    def __init__(self, python: str | os.PathLike, kind: str, payload: dict, allocator: str = "default",
                 timeout: float = 1800):
        env = dict(os.environ)
        env.setdefault("TRANSFORMERS_VERBOSITY", "error")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["PYTHONPATH"] = str(REPO_ROOT)  # only our repository: nothing from the calling environment
        env["JAXLM_MALLOC"] = allocator  # read by train.malloc when the worker starts
        self.kind, self.python, self.timeout = kind, python, timeout
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [str(python), "-m", "train.benchmark", kind], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.stderr, cwd=REPO_ROOT, env=env, text=True,
        )
        self.request(payload)  # the worker answers once its step is compiled and warmed up

    def request(self, message) -> Any:
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(RESULT_TAG):
                return json.loads(line[len(RESULT_TAG):])
        self.proc.wait(self.timeout)
        self.stderr.seek(0)
        raise RuntimeError(f"{self.kind} worker ({self.python}) failed with exit code {self.proc.returncode}:\n"
                           f"{self.stderr.read()[-5000:]}")

    def step(self) -> dict:
        return self.request("step")

    def finish(self) -> dict:
        result = self.request("finish")
        self.proc.stdin.close()
        self.proc.wait(self.timeout)
        self.stderr.close()
        return result


def _worker_main(kind: str) -> None:
    """The worker side of :class:`Worker`: a payload, then ``"step"`` commands, then ``"finish"``."""
    def reply(obj):
        print(RESULT_TAG + json.dumps(obj), flush=True)

    payload = json.loads(sys.stdin.readline())
    spec = BenchSpec(**payload["spec"])
    if kind == "flax-reference":
        contender = flax_reference_step(spec, payload["hf_config"])
    elif kind == "torch-reference":
        contender = torch_reference_step(spec, payload["hf_config"], threads=payload.get("threads"),
                                         adamw_impl=payload.get("torch_adamw", "fused"))
    else:
        raise SystemExit(f"unknown worker {kind!r}")
    reply("ready")
    for line in sys.stdin:
        command = json.loads(line)
        if command == "step":
            reply(contender.step())
        elif command == "finish":
            result = contender.result(spec, payload["flops"], payload["peak_flops_per_s"])
            reply({**result, "allocator": WORKER_ALLOCATOR})
            return


# --------------------------------------------------------------------------------------------
# Entry points.


def resolve_peak(spec: BenchSpec, peak_tflops: float | None) -> dict:
    import jax

    if peak_tflops:
        return {"peak_flops_per_s": peak_tflops * 1e12, "peak_source": "--peak-tflops"}
    measured = matmul_peak_flops(spec.dtype)
    return {
        "peak_flops_per_s": measured["flops_per_s"],
        "peak_source": f"measured: best of {measured['repeats']} jitted {measured['n']}x{measured['n']} "
                       f"{measured['dtype']} matmuls on {jax.default_backend()} in this process",
    }


def environment() -> dict:
    import jax

    dev = jax.local_devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "device_count": jax.device_count(),
        "cpu_count": cpu_count(),
        "platform": platform.platform(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": _versions("jax", "jaxlib", "flax", "optax", "numpy"),
    }


def _header(spec: BenchSpec, peak_tflops: float | None, mode: str) -> tuple[Any, dict]:
    """Our config for ``spec`` and the result's common fields."""
    _, config = our_config(spec)
    return config, {
        "mode": mode,
        "spec": spec.to_dict(),
        "dropout_rates": {name: getattr(config, name) for name in DROPOUT_FIELDS},
        "tokens_per_step": spec.tokens_per_step,
        "flops": model_flops(config, spec.seq_len),
        **resolve_peak(spec, peak_tflops),
        "environment": environment(),
    }


def benchmark_train_step(spec: BenchSpec, peak_tflops: float | None = None, allocator: str = "default") -> dict:
    """Mode ``train-step``: our step alone. ``allocator`` records what
    :func:`train.malloc.retain_freed_memory` did in this process."""
    _, out = _header(spec, peak_tflops, "train-step")
    out["ours"] = {**run_alone(prepare_ours(spec), spec, out["flops"], out["peak_flops_per_s"]), "allocator": allocator}
    return out


def compare_reference(
    spec: BenchSpec,
    peak_tflops: float | None = None,
    reference: str | os.PathLike | None = None,
    references: tuple[str, ...] = ("flax", "torch"),
    torch_adamw: str = "fused",
    allocator: str = "default",
    reference_allocator: str = "default",
    log=sys.stderr,
) -> dict:
    """Mode ``--compare-reference``: ours here, each reference in its own process, all compiled and
    warmed up first, then timed in interleaved rounds (one step of each per round, the lead
    rotating), so a change in the machine's speed hits every contender alike.

    ``reference_allocator="retained"`` gives the references this process's malloc settings
    (:mod:`train.malloc`); ``"default"`` leaves them as their libraries ship.
    """
    if spec.dtype != "float32":
        raise ValueError("the reference comparison runs in float32")
    unknown = set(references) - {"flax", "torch"}
    if unknown:
        raise ValueError(f"unknown references {sorted(unknown)}; choose from flax, torch")
    if reference_allocator not in ("default", "retained"):
        raise ValueError(f"reference_allocator={reference_allocator!r}; choose 'default' or 'retained'")
    ref_python = reference_python(reference, log=log) if "flax" in references else None
    config, out = _header(spec, peak_tflops, "compare-reference")
    payload = {
        "spec": spec.to_dict(),
        "hf_config": hf_gpt2_config(config, spec.dropout),
        "peak_flops_per_s": out["peak_flops_per_s"],
        "flops": out["flops"],
        "threads": cpu_count(),
        "torch_adamw": torch_adamw,
    }
    out["reference_config"] = payload["hf_config"]
    out["fairness"] = (
        f"same GPT-2 config (random init), batch {spec.batch_size} x seq {spec.seq_len}, {spec.dtype}, dropout "
        f"{spec.dropout} in all three, AdamW(lr schedule warmup-cosine peak {spec.learning_rate}, b1={spec.b1}, "
        f"b2={spec.b2}, eps={spec.eps}, weight_decay={spec.weight_decay} on matrices only) after global-norm "
        f"clipping {spec.clip_norm}; mean token cross-entropy over integer labels; one process per contender, "
        f"{spec.steps} interleaved rounds of one step each, never two steps at once; malloc: ours {allocator}, "
        f"references {reference_allocator}"
    )
    contenders: dict[str, Any] = {"ours": prepare_ours(spec)}
    try:
        for name in references:
            print(f"compiling the {name} reference...", file=log, flush=True)
            python = ref_python if name == "flax" else sys.executable
            contenders[name] = Worker(python, f"{name}-reference", payload, allocator=reference_allocator)
        names = list(contenders)
        rounds = []
        for r in range(spec.steps):
            lead = r % len(names)
            rounds.append({name: contenders[name].step()["time"] for name in names[lead:] + names[:lead]})
        out["ours"] = {**contenders["ours"].result(spec, out["flops"], out["peak_flops_per_s"]), "allocator": allocator}
        for name in references:
            out[f"{name}_reference"] = contenders[name].finish()
    finally:
        for contender in contenders.values():
            if isinstance(contender, Worker) and contender.proc.poll() is None:
                contender.proc.kill()
    ours = out["ours"]["step_s"]
    out["ratios"] = {
        f"{name}_reference_over_ours_step_time": out[f"{name}_reference"]["step_s"] / ours for name in references
    }
    out["paired_ratios"] = {
        f"{name}_reference_over_ours_step_time": statistics.median(r[name] / r["ours"] for r in rounds)
        for name in references
    }
    out["ours_fastest"] = all(r > 1 for r in (*out["ratios"].values(), *out["paired_ratios"].values()))
    return out


if __name__ == "__main__":
    _worker_main(sys.argv[1])
