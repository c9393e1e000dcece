"""Train (or resume) a model: ``python scripts/train.py --config gpt2-mini-sotu --set steps=100``.

Rerunning the same command resumes from the run folder's latest checkpoint. On a CPU the process
keeps freed memory for reuse (``train/malloc.py``; ``JAXLM_MALLOC=default`` turns that off).
"""

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the repository's packages, not scripts/train.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import cli  # noqa: E402
from train.malloc import retain_freed_memory

if __name__ == "__main__":
    retain_freed_memory()  # before numpy and JAX start their threads: see train/malloc.py

from train.config import CONFIGS, apply_overrides, load_config  # noqa: E402
from train.loop import train  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="gpt2-mini-sotu",
                        help=f"a registered config ({', '.join(sorted(CONFIGS))}) or a .py file with get_config()")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (repeatable); dict fields take KEY.SUB=VALUE")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    config = apply_overrides(load_config(args.config), args.set)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return config.to_dict()
    summary = train(config)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    cli.run(main)
