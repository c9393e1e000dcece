"""Benchmark the train step, inference, parameter sharing, memory or the loop (bench.modes):

    jaxlm benchmark --model gpt2 --set data.seq_len=256 --set data.batch_size=2 --compare-reference
    jaxlm benchmark --mode infer --model runs/gpt2-mini-sotu --variants float32,bfloat16,int8
    jaxlm benchmark --mode memory --model gpt2-xl --set mesh.data=1 --set mesh.fsdp=16 --set data.batch_size=16

The measured model, shape and mesh are a run config's: --model picks a preset (in infer mode
also a run or Hugging Face folder), --config a whole run config, --set changes its fields
(model.*, data.seq_len, data.batch_size, data.grad_accum, mesh.*). Prints one JSON object of
medians after compilation; --compare-reference adds transformers' Flax GPT-2 (transformers 4.57.6
in its own virtual environment under .cache/bench-venv) and PyTorch GPT-2, timed in interleaved
rounds in the same invocation, and the ratios of their times to ours.
"""

from jaxlm import cli

HELP = "time the train step, inference, sharing, memory or the loop"


def add_arguments(parser) -> None:
    parser.add_argument("--mode", default="train-step", help="what to time (bench.modes)",
                        choices=["train-step", "infer", "sharing", "memory", "loop-idle", "formulations"])
    parser.add_argument("--model", default="gpt2", help="a preset of models.PRESETS (infer: also a run or HF folder)")
    cli.add_run_config(parser, default=None)
    cli.add_out(parser, "also write the JSON result to this file (and a markdown table beside it, if any)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds after compilation")
    parser.add_argument("--dropout", choices=["off", "on"], default="off",
                        help="train-step: off sets every dropout rate to 0 (in all contenders); on keeps the model's")
    parser.add_argument("--peak-tflops", type=float, help="peak FLOP/s for MFU; default: measured with a large matmul")
    refs = parser.add_argument_group("references (train-step, infer)")
    refs.add_argument("--compare-reference", action="store_true", help="train-step: also time transformers' steps")
    refs.add_argument("--references", default="flax,torch", help="which references (none: ours alone)")
    refs.add_argument("--reference-python", help="venv folder or interpreter of the Flax reference "
                                                 "(default .cache/bench-venv)")
    refs.add_argument("--torch-adamw", choices=["fused", "foreach", "for-loop"], default="fused",
                      help="the PyTorch reference's AdamW implementation")
    refs.add_argument("--reference-allocator", choices=["default", "retained"], default="default",
                      help="the references' malloc: their libraries' default, or ours")
    refs.add_argument("--reference-threads", type=int, help="PyTorch's threads (default: every core)")
    infer = parser.add_argument_group("--mode infer")
    infer.add_argument("--variants", default="float32,bfloat16,int8", help="of float32, bfloat16, int8, int8-bf16")
    infer.add_argument("--variant-runs", default="", metavar="NAME=RUN_DIR[,NAME=RUN_DIR]",
                       help="run folders measured as extra rows next to the fp32 baseline")
    infer.add_argument("--batch-sizes", default="1,16", help="decoding batch sizes (formulations: the first)")
    infer.add_argument("--prompt-len", type=int, default=16, help="tokens in each prompt")
    infer.add_argument("--new-tokens", type=int, default=64, help="tokens decoded after each prompt")
    infer.add_argument("--data", help="text/JSONL to measure quality on (--model a run folder); default: random tokens")
    infer.add_argument("--quality-tokens", type=int, default=16384, help="positions the quality is measured on")
    infer.add_argument("--draft", help="speculative decoding rows: a draft decoder run with the model's tokenizer")
    infer.add_argument("--speculate", default="", metavar="K[,K]", help="with --draft: proposals per pass, a row each")
    infer.add_argument("--no-encoder", action="store_true", help="skip the all-MiniLM-L6-v2 encoder rows")
    infer.add_argument("--encoder-batch", type=int, default=32, help="sentences per timed encoder batch")
    infer.add_argument("--encoder-sentences", type=int, default=256, help="sentences the cosines are measured on")
    infer.add_argument("--encoder-data", help="sentences for the encoder's cosines (default: SOTU validation)")
    sharing = parser.add_argument_group("--mode sharing (the encoders' shape: --model and --set model.*)")
    sharing.add_argument("--d-embed", type=int, default=128, help="E of the factorised ALBERT rows")
    memory = parser.add_argument_group("--mode memory")
    memory.add_argument("--device", default="h100-80gb", help="a key of bench.memory.DEVICES, or custom")
    memory.add_argument("--device-memory-gib", type=float, help="memory per device (with --device custom)")
    memory.add_argument("--usable-fraction", type=float, help="share of it JAX may use (default: the device's)")
    memory.add_argument("--attention", default="auto", choices=["auto", "xla", "flash"],
                        help="xla: probabilities materialised; flash: fused (cuDNN); auto: by device")
    memory.add_argument("--compile", action="store_true",
                        help="also compile the train step from shapes (simulated CPU devices when the mesh needs "
                             "more) and report XLA's memory analysis next to the plan")


def run(args) -> dict:
    import os
    from pathlib import Path

    import models
    from bench import modes
    from train.config import DataConfig, MeshConfig, TrainConfig, load_config

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.config:
        base = load_config(args.config)
    else:  # a folder (infer) is loaded by the benchmark itself; its shape here is gpt2's
        preset = "gpt2" if Path(args.model).exists() else args.model
        model = models.get_config(preset)
        base = TrainConfig(model=model, data=DataConfig(seq_len=min(256, model.n_positions), batch_size=2),
                           mesh=MeshConfig(data=1))
    result = modes.run(args.mode, cli.run_config(args, base), args, allocator=cli.ALLOCATOR)
    modes.write(result, args.out)
    return result
