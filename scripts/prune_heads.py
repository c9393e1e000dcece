"""Remove a trained GPT run's least important attention heads (Michel et al. 2019) into a new run folder.

    python scripts/prune_heads.py runs/gpt2-mini-sotu runs/gpt2-mini-sotu-8heads --heads 8
    python scripts/prune_heads.py runs/gpt2-mini-sotu runs/pruned --heads 1 --per-layer   # scanned models

The new folder evaluates, generates and converts (``convert_hf.py to-hf``) like any run.
"""

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the repository's packages, not scripts/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import cli  # noqa: E402
from train.heads import prune_run  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a GPT run folder trained with the lm task")
    parser.add_argument("dest", help="the new run folder (must not exist or be empty)")
    parser.add_argument("--heads", type=int, required=True, help="heads to remove (in all, or per layer)")
    parser.add_argument("--per-layer", action="store_true", help="remove --heads from every layer (scanned models)")
    parser.add_argument("--batches", type=int, default=4, help="16-sequence training batches scoring the heads")
    args = parser.parse_args(argv)
    config = prune_run(args.run, args.dest, args.heads, args.per_layer, args.batches)
    result = {"dest": args.dest, "pruned_heads": [list(h) for h in config.pruned_heads]}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    cli.run(main)
