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
    the ``jaxlm`` command first calls
    :func:`train.malloc.retain_freed_memory`, which keeps freed memory in the process instead of
    page-faulting XLA's temporaries in at every step; ``allocator`` in each contender's result
    says what its process used. The references keep their default allocator unless
    ``--reference-allocator retained``.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

import models
import optim
from bench.measure import (
    Contender,
    CpuContention,
    HostMemory,
    cpu_count,
    device_peak_bytes,
    environment,
    load,
    load_note,
    mark,
    matmul_peak_flops,
    xla_memory,
)
from bench.spec import EPS, BenchSpec, random_tokens
from bench.workers import Worker, reference_python
from models.config import TransformerConfig
from train import sharding
from train.step import init_state, make_train_step
from train.tasks import LanguageModeling


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

    shapes = models.param_shapes(config.module())
    non_embedding = sum(int(np.prod(x.shape)) for k, v in shapes.items() if k not in ("wte", "wpe")
                        for x in jax.tree.leaves(v))
    return flops_per_token(n_layer=config.n_layer, d_model=config.d_model, vocab_size=config.vocab_size,
                           seq_len=seq_len, non_embedding_params=non_embedding)


def our_config(spec: BenchSpec):

    overrides = dict(spec.model_overrides)
    overrides.setdefault("dtype", spec.dtype)
    if spec.dropout == "off":
        for name in TransformerConfig.DROPOUTS:
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
    """A mesh of the first device alone, with the training loop's axes."""
    return Mesh(np.asarray(jax.devices()[:1]).reshape((1,) * len(sharding.AXES)), sharding.AXES)


def prepare_ours(spec: BenchSpec) -> Contender:
    """Our train step, built as ``train.loop.train`` builds it."""


    memory = HostMemory()
    memory.start()
    module, config = our_config(spec)
    tx, _ = optim.make_optimizer(optim.OptimizerConfig(), spec.total_steps)
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

    def call(wait: bool = True):
        """One step; ``wait=False`` only queues it (for timing steps back to back)."""
        new_state, sums = compiled(holder["state"], batch)
        if wait:
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
        "embd_pdrop": rate("embed_dropout"),
        "attn_pdrop": rate("attn_dropout"),
        "resid_pdrop": rate("resid_dropout"),
        "tie_word_embeddings": True,
    }


def resolve_peak(spec: BenchSpec, peak_tflops: float | None) -> dict:

    if peak_tflops:
        return {"peak_flops_per_s": peak_tflops * 1e12, "peak_source": "--peak-tflops"}
    measured = matmul_peak_flops(spec.dtype)
    return {
        "peak_flops_per_s": measured["flops_per_s"],
        "peak_source": f"measured: best of {measured['repeats']} jitted {measured['n']}x{measured['n']} "
                       f"{measured['dtype']} matmuls on {jax.default_backend()} in this process",
    }


def _header(spec: BenchSpec, peak_tflops: float | None, mode: str) -> tuple[Any, dict]:
    """Our config for ``spec`` and the result's common fields."""
    _, config = our_config(spec)
    return config, {
        "mode": mode,
        "spec": spec.to_dict(),
        "dropout_rates": {name: getattr(config, name) for name in TransformerConfig.DROPOUTS},
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
    out["other_processes_cpu_cores"] = load(out["ours"])
    out["markdown"] = markdown(out)
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
    opt = optim.OptimizerConfig()
    payload = {
        "spec": spec.to_dict(),
        "hf_config": hf_gpt2_config(config, spec.dropout),
        "optimizer": dataclasses.asdict(opt),
        "peak_flops_per_s": out["peak_flops_per_s"],
        "flops": out["flops"],
        "threads": cpu_count(),
        "torch_adamw": torch_adamw,
    }
    out["reference_config"] = payload["hf_config"]
    out["fairness"] = (
        f"same GPT-2 config (random init), batch {spec.batch_size} x seq {spec.seq_len}, {spec.dtype}, dropout "
        f"{spec.dropout} in all three, AdamW(lr schedule warmup-cosine peak {opt.learning_rate}, b1={opt.b1}, "
        f"b2={opt.b2}, eps={EPS}, weight_decay={opt.weight_decay} on matrices only) after global-norm "
        f"clipping {opt.clip_norm}; mean token cross-entropy over integer labels; one process per contender, "
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
        contention = CpuContention(pids=[c.proc.pid for c in contenders.values() if isinstance(c, Worker)])
        contention.start()
        for r in range(spec.steps):
            lead = r % len(names)
            rounds.append({name: contenders[name].step()["time"] for name in names[lead:] + names[:lead]})
        out["other_processes_cpu_cores"] = contention.stop()
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
    out["markdown"] = markdown(out)
    return out


def markdown(out: dict) -> str:
    """The contenders' medians as a table: step time, tokens/s, MFU, and the reference's time over
    ours (median and paired), marked * when measured under load."""
    spec, env, cores = out["spec"], out["environment"], out.get("other_processes_cpu_cores")
    lines = [f"{spec['batch_size']} x {spec['seq_len']} tokens, {spec['dtype']}, dropout {spec['dropout']}; "
             f"{env['device']} ({env['backend']}, {env['cpu_count']} cores), jax {env['versions']['jax']}; "
             f"{load_note(cores)}; medians of {spec['steps']} interleaved rounds; MFU against "
             f"{out['peak_flops_per_s'] / 1e9:.0f} GFLOP/s ({out['peak_source'].split(':')[0]}).", "",
             "| train step | step (s) | tokens/s | MFU | its time over ours | paired rounds |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name in ("ours", "flax_reference", "torch_reference"):
        if name not in out:
            continue
        r, key = out[name], f"{name}_over_ours_step_time"
        ratio, paired = out.get("ratios", {}).get(key), out.get("paired_ratios", {}).get(key)
        lines.append(f"| {r.get('implementation', name)} | {r['step_s']:.3f} | {r['tokens_per_s']:.1f} | "
                     f"{r['mfu']:.2f} | {mark(f'{ratio:.3f}' if ratio else '1', cores)} | "
                     f"{mark(f'{paired:.3f}' if paired else '', cores)} |")
    return "\n".join(lines) + "\n"
