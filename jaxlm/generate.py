"""Continue a prompt with a trained decoder, decoding with the KV cache (models.generation):

    jaxlm generate runs/gpt2-mini-sotu --prompt "The state of the Union is"
    jaxlm generate path/to/hf-gpt2 --prompt "Hello" --num-samples 4 --top-p 0.9 --dtype bfloat16
    jaxlm generate runs/gpt2-mini-sotu --prompt "The state of the Union is" --draft runs/student --speculate 4

Prints the continuations and the decoding speed (new tokens per second, compilation excluded).
A sample stops at the tokenizer's end of text. The tokenizer is the run's, or a Hugging Face
folder's own files, unless --tokenizer names another. With --draft, a smaller decoder with the
same tokenizer proposes --speculate tokens per pass of the model (speculative decoding,
models.speculative): the same distribution, greedy the same tokens.
"""

from jaxlm import cli

HELP = "continue a prompt with a decoder"


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="a run folder of ours or a Hugging Face GPT/GPT-2 folder")
    parser.add_argument("--prompt", required=True, help="the text to continue")
    parser.add_argument("--tokenizer", help="default: the run's, or a Hugging Face folder's own")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="tokens to add to the prompt, at most")
    parser.add_argument("--num-samples", type=int, default=1, help="continuations of the prompt (prefilled once)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=40, help="0: no top-k cut")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling; 1: no cut")
    cli.add_seed(parser, default=0)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="parameters and compute (default: the run's)")
    parser.add_argument("--quantize", choices=["int8"], help="int8 dense and embedding weights")
    parser.add_argument("--draft", help="speculative decoding: a smaller decoder (run or HF folder), same tokenizer")
    parser.add_argument("--speculate", type=int, default=4, help="with --draft: tokens it proposes per pass")
    cli.add_out(parser, "also write the JSON result to this file")


def run(args) -> dict:
    import json
    from pathlib import Path

    from train.evaluation import generate_from_checkpoint

    result = generate_from_checkpoint(
        args.checkpoint, args.prompt, tokenizer=args.tokenizer, step=args.step, max_new_tokens=args.max_new_tokens,
        num_samples=args.num_samples, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        seed=args.seed, dtype=args.dtype, quantize=args.quantize, draft=args.draft, speculate=args.speculate,
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result
