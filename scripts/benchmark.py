"""Benchmark the train step: ``python scripts/benchmark.py --model gpt2 --seq-len 256 --batch-size 2``.

Prints one JSON object: median step time after compilation, tokens/s, compile time, peak memory,
model FLOPs per token and MFU (see ``bench/train_step.py`` for what each number counts).
``--compare-reference`` adds transformers' Flax GPT-2 (transformers 4.57.6, in its own virtual
environment, created on first use under ``.cache/bench-venv``) and PyTorch GPT-2 train steps,
measured in the same invocation, and the ratios of their step times to ours.

``--mode infer`` measures fp32, bf16 and int8 decoding (batch 1 and 16) and encoding (all-MiniLM-L6-v2)
against transformers' PyTorch and Flax generate and PyTorch BertModel, with parameter bytes, the
memory-bandwidth limit and the quality change (``bench/inference.py``); ``--steps`` is the number of
interleaved rounds, and ``--output X.json`` also writes the markdown table to ``X.md``.
``--variant-runs heads-8=runs/pruned,student=runs/student`` adds smaller-model runs as rows next to
the fp32 baseline, timed in the same rounds.
"""

import argparse
import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the repository's packages, not scripts/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import cli  # noqa: E402
from train.malloc import retain_freed_memory

# Before numpy and JAX start their threads (see train/malloc.py); JAXLM_MALLOC=default turns it off.
ALLOCATOR = retain_freed_memory() if __name__ == "__main__" else "default"

from bench.formulations import compare_formulations  # noqa: E402
from bench.inference import InferSpec, compare_inference  # noqa: E402
from bench.loop_idle import measure_loop_idle  # noqa: E402
from bench.memory import DEVICES, MemorySpec, compiled_memory, plan  # noqa: E402
from bench.sharing import SharingSpec, compare_sharing  # noqa: E402
from bench.spec import BenchSpec  # noqa: E402
from bench.train_step import benchmark_train_step, compare_reference  # noqa: E402


def variant_runs(text: str) -> tuple[tuple[str, str], ...]:
    """``NAME=RUN_DIR[,NAME=RUN_DIR]`` -> ``((name, run dir), ...)``."""
    pairs = [item.partition("=") for item in text.split(",") if item]
    bad = [name + eq + path for name, eq, path in pairs if not (name and eq and path)]
    if bad:
        raise ValueError(f"--variant-runs {bad}: give NAME=RUN_DIR pairs separated by commas, e.g. heads-8=runs/pruned")
    return tuple((name, path) for name, _, path in pairs)


def parse_overrides(items):
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def memory_mode(args) -> dict:
    spec = MemorySpec(
        model=args.model, model_overrides=parse_overrides(args.set), mesh=args.mesh, batch_size=args.batch_size,
        grad_accum=args.grad_accum, seq_len=args.seq_len, dtype=args.dtype, param_dtype=args.param_dtype,
        remat=args.remat, device=args.device, device_memory_gib=args.device_memory_gib,
        usable_fraction=args.usable_fraction, attention=args.attention,
    )
    if args.compile:
        import jax

        jax.config.update("jax_num_cpu_devices", spec.device_count)  # before anything starts a backend
    result = plan(spec)
    if args.compile:
        result["compiled"] = compiled_memory(spec)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["train-step", "sharing", "loop-idle", "memory", "infer", "formulations"],
                        default="train-step",
                        help="sharing: BERT vs ALBERT with and without cross-layer sharing (bench/sharing.py); "
                             "loop-idle: the training loop's step time against the device's (bench/loop_idle.py); "
                             "memory: bytes per device of a training configuration, from shapes (bench/memory.py); "
                             "infer: fp32/bf16/int8 decoding and encoding against transformers (bench/inference.py); "
                             "formulations: 16- and 8-bit matrix-vector products under XLA's CPU flags "
                             "(bench/formulations.py, at the first of --batch-sizes, --steps rounds)")
    parser.add_argument("--model", default="gpt2", help="a preset of models.PRESETS")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a model config field (repeatable), e.g. --set scan_layers=true")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
    parser.add_argument("--dropout", choices=["off", "on"], default="off",
                        help="off: every dropout rate 0 (in all contenders); on: the preset's rates")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak FLOP/s for MFU; default: measured with a large matmul in this process")
    parser.add_argument("--compare-reference", action="store_true",
                        help="also time transformers' Flax and PyTorch GPT-2 train steps")
    parser.add_argument("--references", default="flax,torch",
                        help="which references to compare against (none: ours alone)")
    parser.add_argument("--reference-python", default=None,
                        help="venv folder or interpreter for the Flax reference (default .cache/bench-venv)")
    parser.add_argument("--torch-adamw", choices=["fused", "foreach", "for-loop"], default="fused",
                        help="torch.optim.AdamW implementation of the PyTorch reference")
    parser.add_argument("--reference-allocator", choices=["default", "retained"], default="default",
                        help="the references' malloc: their libraries' default, or ours")
    parser.add_argument("--output", default=None, help="also write the JSON to this file")
    sharing = parser.add_argument_group("--mode sharing: the encoders' common shape")
    sharing.add_argument("--n-layer", type=int, default=SharingSpec.n_layer)
    sharing.add_argument("--d-model", type=int, default=SharingSpec.d_model)
    sharing.add_argument("--n-head", type=int, default=SharingSpec.n_head)
    sharing.add_argument("--d-ff", type=int, default=SharingSpec.d_ff)
    sharing.add_argument("--d-embed", type=int, default=SharingSpec.d_embed, help="E of the factorised ALBERT rows")
    sharing.add_argument("--vocab-size", type=int, default=SharingSpec.vocab_size)
    idle = parser.add_argument_group("--mode loop-idle: a training config, as scripts/train.py takes it")
    idle.add_argument("--config", default="gpt2-mini-sotu", help="a registered config or a .py file")
    idle.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a training config field (repeatable), e.g. --train-set model=gpt2-tiny")
    memory = parser.add_argument_group("--mode memory (also --model, --set, --seq-len, --batch-size, --dtype)")
    memory.add_argument("--mesh", type=json.loads, default={"data": 1}, help='JSON, e.g. \'{"fsdp": 16}\'')
    memory.add_argument("--grad-accum", type=int, default=1)
    memory.add_argument("--param-dtype", default="float32", choices=["float32", "bfloat16"])
    memory.add_argument("--remat", default="none", help="none, full, dots, dots_no_batch")
    memory.add_argument("--device", default="h100-80gb", help=f"one of {', '.join(DEVICES)}, or custom")
    memory.add_argument("--device-memory-gib", type=float, help="memory per device (with --device custom)")
    memory.add_argument("--usable-fraction", type=float, help="share of it JAX may use (default: the device's)")
    memory.add_argument("--attention", default="auto", choices=["auto", "xla", "flash"])
    memory.add_argument("--compile", action="store_true",
                        help="also compile the train step from shapes on this machine (simulated CPU devices when "
                             "the mesh needs more) and report XLA's memory analysis next to the plan")
    infer = parser.add_argument_group("--mode infer (--model may also be a run or Hugging Face folder)")
    infer.add_argument("--variants", default=",".join(InferSpec.variants), help="of float32, bfloat16, int8, int8-bf16")
    infer.add_argument("--variant-runs", default="", metavar="NAME=RUN_DIR[,NAME=RUN_DIR]",
                       help="run folders measured as extra rows next to the fp32 baseline (head-pruned, distilled, "
                            "adaptive-softmax, magnitude-pruned), of --model's vocabulary and tokenizer")
    infer.add_argument("--batch-sizes", default=",".join(map(str, InferSpec.batch_sizes)))
    infer.add_argument("--prompt-len", type=int, default=InferSpec.prompt_len)
    infer.add_argument("--new-tokens", type=int, default=InferSpec.new_tokens)
    infer.add_argument("--data", help="text/JSONL to measure quality on (needs a run folder as --model); "
                                      "default: random tokens")
    infer.add_argument("--quality-tokens", type=int, default=InferSpec.quality_tokens)
    infer.add_argument("--no-encoder", action="store_true", help="skip the all-MiniLM-L6-v2 encoder rows")
    infer.add_argument("--encoder-batch", type=int, default=InferSpec.encoder_batch)
    infer.add_argument("--encoder-sentences", type=int, default=InferSpec.encoder_sentences)
    infer.add_argument("--encoder-data", help="sentences for the encoder's cosines (default: SOTU validation)")
    infer.add_argument("--reference-threads", type=int,
                       help="PyTorch's threads (default: every core; on a shared machine 1 can be faster)")
    args = parser.parse_args(argv)

    if args.mode == "infer":
        refs = tuple(r for r in args.references.split(",") if r and r != "none")
        result = compare_inference(InferSpec(
            model=args.model, variants=tuple(args.variants.split(",")), variant_runs=variant_runs(args.variant_runs),
            batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")), prompt_len=args.prompt_len,
            new_tokens=args.new_tokens, rounds=args.steps, warmup=args.warmup, data=args.data,
            quality_tokens=args.quality_tokens, encoder=not args.no_encoder, encoder_batch=args.encoder_batch,
            encoder_sentences=args.encoder_sentences, encoder_data=args.encoder_data, references=refs,
            reference_threads=args.reference_threads,
        ), args.reference_python)
        return _report(result, args.output)
    if args.mode == "formulations":
        return _report(compare_formulations(batch=int(args.batch_sizes.split(",")[0]), rounds=args.steps), args.output)
    if args.mode == "sharing":
        result = compare_sharing(SharingSpec(
            n_layer=args.n_layer, d_model=args.d_model, n_head=args.n_head, d_ff=args.d_ff, d_embed=args.d_embed,
            vocab_size=args.vocab_size, seq_len=args.seq_len, batch_size=args.batch_size, steps=args.steps,
            warmup=args.warmup,
        ))
        print(json.dumps(result, indent=2))
        return result
    if args.mode == "memory":
        result = memory_mode(args)
        print(json.dumps(result, indent=2))
        return result
    if args.mode == "loop-idle":
        result = measure_loop_idle(args.config, args.train_set, bare_steps=args.steps)
        print(json.dumps(result, indent=2))
        return result
    spec = BenchSpec(
        model=args.model, seq_len=args.seq_len, batch_size=args.batch_size, dtype=args.dtype, steps=args.steps,
        warmup=args.warmup, dropout=args.dropout, model_overrides=parse_overrides(args.set),
    )
    if args.compare_reference:
        refs = tuple(r for r in args.references.split(",") if r)
        result = compare_reference(spec, args.peak_tflops, args.reference_python, refs, args.torch_adamw,
                                   allocator=ALLOCATOR, reference_allocator=args.reference_allocator)
    else:
        result = benchmark_train_step(spec, args.peak_tflops, allocator=ALLOCATOR)
    return _report(result, args.output)


def _report(result: dict, output: str | None) -> dict:
    """Print the JSON; with ``--output``, also write it there (and the markdown table, if any, next
    to it with the suffix ``.md``)."""
    text = json.dumps(result, indent=2)
    print(text)
    if output:
        Path(output).write_text(text + "\n")
        if "markdown" in result:
            Path(output).with_suffix(".md").write_text(result["markdown"])
    return result


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    cli.run(main)
