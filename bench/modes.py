"""The benchmark's modes (``jaxlm benchmark --mode``), each measured on a run config's model,
data shape and mesh.

- ``train-step``: our jitted train step (``bench.train_step``), or with references transformers'
  Flax and PyTorch GPT-2 steps in interleaved rounds;
- ``infer``: fp32/bf16/int8 decoding and encoding against transformers (``bench.inference``);
- ``sharing``: BERT against ALBERT with and without cross-layer sharing (``bench.sharing``);
- ``memory``: bytes per device of a training configuration, from shapes (``bench.memory``);
- ``loop-idle``: the training loop's step time against the device's (``bench.loop_idle``);
- ``formulations``: 16- and 8-bit matrix-vector products under XLA's CPU flags (``bench.formulations``).
"""

from __future__ import annotations

import json
from pathlib import Path

MODES = ("train-step", "infer", "sharing", "memory", "loop-idle", "formulations")


def variant_runs(text: str) -> tuple[tuple[str, str], ...]:
    """``NAME=RUN_DIR[,NAME=RUN_DIR]`` -> ``((name, run dir), ...)``."""
    pairs = [item.partition("=") for item in text.split(",") if item]
    bad = [name + eq + path for name, eq, path in pairs if not (name and eq and path)]
    if bad:
        raise ValueError(f"--variant-runs {bad}: give NAME=RUN_DIR pairs separated by commas, e.g. heads-8=runs/pruned")
    return tuple((name, path) for name, _, path in pairs)


def run(mode: str, config, opts, allocator: str = "default") -> dict:
    """Measure ``mode`` on the run config ``config`` (model, data.seq_len, data.batch_size, mesh);
    ``opts``: the command's other options (``jaxlm benchmark --help``). Every result says the
    load it was measured under (``load``: the most cores other processes used meanwhile)."""
    from bench.measure import UNDER_LOAD_CORES, load, under_load

    result = _measure(mode, config, opts, allocator)
    cores = load(result)
    result["load"] = {"other_processes_cpu_cores": cores, "under_load": under_load(cores),
                      "threshold_cores": UNDER_LOAD_CORES}
    return result


def _measure(mode: str, config, opts, allocator: str) -> dict:
    model, data = config.model, config.data
    if mode == "infer":
        from bench.inference import InferSpec, compare_inference

        refs = tuple(r for r in opts.references.split(",") if r and r != "none")
        return compare_inference(InferSpec(
            model=opts.model, variants=tuple(opts.variants.split(",")), variant_runs=variant_runs(opts.variant_runs),
            batch_sizes=tuple(int(b) for b in opts.batch_sizes.split(",")), prompt_len=opts.prompt_len,
            new_tokens=opts.new_tokens, rounds=opts.rounds, warmup=opts.warmup, data=opts.data,
            quality_tokens=opts.quality_tokens, encoder=not opts.no_encoder, encoder_batch=opts.encoder_batch,
            encoder_sentences=opts.encoder_sentences, encoder_data=opts.encoder_data, references=refs,
            reference_threads=opts.reference_threads, draft=opts.draft,
            speculate=tuple(int(k) for k in opts.speculate.split(",") if k),
        ), opts.reference_python)
    if mode == "formulations":
        from bench.formulations import compare_formulations

        return compare_formulations(batch=int(opts.batch_sizes.split(",")[0]), rounds=opts.rounds)
    if mode == "sharing":
        from bench.sharing import SharingSpec, compare_sharing

        return compare_sharing(SharingSpec(
            n_layer=model.n_layer, d_model=model.d_model, n_head=model.n_head, d_ff=model.d_ff, d_embed=opts.d_embed,
            vocab_size=model.vocab_size, seq_len=data.seq_len, batch_size=data.batch_size, steps=opts.rounds,
            warmup=opts.warmup,
        ))
    if mode == "memory":
        from bench.memory import MemorySpec, compiled_memory, plan

        spec = MemorySpec(
            model=model, mesh=config.mesh.sizes(), batch_size=data.batch_size, grad_accum=data.grad_accum,
            seq_len=data.seq_len, dtype=model.dtype, param_dtype=model.param_dtype, remat=model.remat,
            device=opts.device, device_memory_gib=opts.device_memory_gib, usable_fraction=opts.usable_fraction,
            attention=opts.attention,
        )
        if opts.compile:
            import jax

            jax.config.update("jax_num_cpu_devices", spec.device_count)  # before anything starts a backend
        result = plan(spec)
        if opts.compile:
            result["compiled"] = compiled_memory(spec)
        return result
    if mode == "loop-idle":
        from bench.loop_idle import measure_loop_idle

        return measure_loop_idle(config, bare_steps=opts.rounds)
    from bench.spec import BenchSpec
    from bench.train_step import benchmark_train_step, compare_reference

    spec = BenchSpec(model=model, seq_len=data.seq_len, batch_size=data.batch_size, dtype=model.dtype,
                     steps=opts.rounds, warmup=opts.warmup, dropout=opts.dropout)
    if opts.compare_reference:
        refs = tuple(r for r in opts.references.split(",") if r and r != "none")
        return compare_reference(spec, opts.peak_tflops, opts.reference_python, refs, opts.torch_adamw,
                                 allocator=allocator, reference_allocator=opts.reference_allocator)
    return benchmark_train_step(spec, opts.peak_tflops, allocator=allocator)


def write(result: dict, out: str | None) -> None:
    """With ``--out``, the JSON there (and the markdown table, if any, beside it with ``.md``)."""
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        if "markdown" in result:
            Path(out).with_suffix(".md").write_text(result["markdown"])
