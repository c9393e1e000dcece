"""Continue a prompt with a trained decoder: ``python scripts/generate.py runs/gpt2-mini-sotu --prompt "..."``.

Decodes with the KV cache (``models.generation``), stops a sample at the tokenizer's end-of-text
token, and prints JSON with the continuations and the decoding speed (new tokens per second,
compilation excluded). ``--dtype bfloat16`` and ``--quantize int8`` run the cheaper variants
(``models.quantize``). The tokenizer is the run's, or a Hugging Face folder's own files, unless
``--tokenizer`` names another.
"""

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax

from models import quantize
from models.classifier import ClassifierConfig
from models.generation import check_options, sample
from models.gpt import GPTConfig
from train import cli  # noqa: E402
from train.checkpoint import load_for_eval
from train.data.tokenizers import load_tokenizer


def _tokenizer(given: str | None, default: str):
    """``--tokenizer``, else the run's (a Hugging Face folder holds its own)."""
    if given:
        return load_tokenizer(given)
    try:
        return load_tokenizer(default)
    except (OSError, ValueError) as e:
        raise ValueError(f"{e}; pass --tokenizer with the model's tokenizer") from None


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a run folder of ours or a Hugging Face GPT/GPT-2 folder")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--tokenizer", help="default: the run's tokenizer, or a Hugging Face folder's own")
    parser.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--num-samples", type=int, default=1, help="continuations of the prompt (computed once)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=40, help="0: no top-k cut")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling; 1: no cut")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="parameters and compute (default: the run's)")
    parser.add_argument("--quantize", choices=quantize.QUANTIZATIONS, help="int8 dense and embedding weights")
    args = parser.parse_args(argv)
    check_options(args.max_new_tokens, num_samples=args.num_samples, temperature=args.temperature, top_k=args.top_k,
                  top_p=args.top_p)  # before the checkpoint loads
    module, config, params, run = load_for_eval(args.checkpoint, args.step)
    if not isinstance(config, GPTConfig):
        hint = ("; it is a classifier: report its accuracy and F1 with scripts/evaluate.py CHECKPOINT --data TEST.jsonl"
                if isinstance(config, ClassifierConfig) else "")
        raise ValueError(f"{args.checkpoint} holds a {type(config).__name__}, but generate.py continues text with a "
                         f"GPT/GPT-2 language model{hint}")
    module, params = quantize.prepare(module, params, args.dtype, args.quantize)
    tokenizer = _tokenizer(args.tokenizer, run.get("tokenizer") or args.checkpoint)
    out = sample(module, params, [tokenizer.encode(args.prompt)], args.max_new_tokens, num_samples=args.num_samples,
                 rng=jax.random.PRNGKey(args.seed), temperature=args.temperature, top_k=args.top_k,
                 top_p=args.top_p, eos_id=tokenizer.eos_id, vocab_size=min(tokenizer.vocab_size, config.vocab_size))
    texts = [tokenizer.decode(ids) for ids in out.ids]
    result = {
        "prompt": args.prompt,
        **({"continuation": texts[0]} if len(texts) == 1 else {"continuations": texts}),
        "new_tokens": out.new_tokens,
        "tokens_per_s": round(out.tokens_per_s, 1),
        "decode_s": round(out.seconds, 3),
        "compile_s": round(out.compile_seconds, 2),
        "dtype": module.config.dtype,
        "quantize": args.quantize,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    cli.run(main)
