"""Convert between Hugging Face checkpoints and our run folders.

    python scripts/convert_hf.py to-ours path/to/hf-folder runs/gpt2-converted
    python scripts/convert_hf.py to-hf runs/gpt2-mini-sotu path/to/hf-folder [--step N]

An HF folder holds config.json + model.safetensors (or pytorch_model.bin); ours holds run.json
and an orbax checkpoint of the parameters. The HF folder written by to-hf loads with
transformers' from_pretrained.
"""

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models
from models import hf
from train import cli  # noqa: E402
from train.checkpoint import load_params, save_params


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="direction", required=True)
    to_ours = sub.add_parser("to-ours", help="HF folder -> our run folder")
    to_ours.add_argument("source")
    to_ours.add_argument("dest")
    to_ours.add_argument("--tokenizer", help="recorded in run.json for evaluate/generate (default: the HF folder)")
    to_hf = sub.add_parser("to-hf", help="our run folder -> HF folder")
    to_hf.add_argument("source")
    to_hf.add_argument("dest")
    to_hf.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    to_hf.add_argument("--overwrite", action="store_true", help="replace a non-empty destination")
    args = parser.parse_args(argv)
    if args.direction == "to-ours":
        module, config, params = hf.load_pretrained(args.source)
        tokenizer = args.tokenizer or str(Path(args.source).absolute())
        out = save_params(args.dest, config, params, {"source": str(Path(args.source).absolute()), "tokenizer": tokenizer})
    else:
        module, config, params, run = load_params(args.source, args.step)
        out = hf.save_pretrained(args.dest, config, params, overwrite=args.overwrite)
    result = {"direction": args.direction, "dest": str(out), "model": type(config).__name__,
              "params": models.count_params(params)}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    cli.run(main)
