"""Continue a prompt with a trained decoder: ``python scripts/generate.py runs/gpt2-mini-sotu --prompt "..."``."""

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax

from models.classifier import ClassifierConfig
from models.generation import generate
from models.gpt import GPTConfig
from train import cli  # noqa: E402
from train.data.tokenizers import load_tokenizer
from train.evaluation import load_for_eval


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", help="a run folder of ours or a Hugging Face GPT/GPT-2 folder")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--tokenizer", help="default: the run's tokenizer")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    module, config, params, run = load_for_eval(args.checkpoint)
    if not isinstance(config, GPTConfig):
        hint = ("; it is a classifier: report its accuracy and F1 with scripts/evaluate.py CHECKPOINT --data TEST.jsonl"
                if isinstance(config, ClassifierConfig) else "")
        raise ValueError(f"{args.checkpoint} holds a {type(config).__name__}, but generate.py continues text with a "
                         f"GPT/GPT-2 language model{hint}")
    tokenizer = load_tokenizer(args.tokenizer or run["tokenizer"])
    ids = generate(module, params, tokenizer.encode(args.prompt), args.max_new_tokens,
                   rng=jax.random.PRNGKey(args.seed), temperature=args.temperature, top_k=args.top_k)
    result = {"prompt": args.prompt, "continuation": tokenizer.decode(ids)}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    cli.run(main)
