"""Train a sentencepiece tokenizer on text or JSONL files and print a JSON summary.

Usage: python scripts/train_tokenizer.py FILE... --output PREFIX [--vocab-size N]
       [--model-type unigram|bpe] [--text-field text] [--overwrite]
Writes PREFIX.model and PREFIX.vocab.
"""

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import cli  # noqa: E402
from train.data.corpora import read_texts
from train.data.tokenizers import (
    SentencePieceTokenizer,
    check_nonempty_file,
    train_sentencepiece,
    training_sentences,
)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=(
            "Train a sentencepiece model with the special pieces our LMs and BERT/ALBERT use "
            "(<pad>, <unk>, <s>, <|endoftext|> as eos, [CLS], [SEP], [MASK]). .jsonl files give "
            "one document per line from --text-field, other files are read as plain text; "
            "training sees their lines cut at sentence ends."
        )
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="text or .jsonl files")
    parser.add_argument(
        "--output", required=True, type=Path, help="writes OUTPUT.model and OUTPUT.vocab"
    )
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram")
    parser.add_argument(
        "--text-field", default="text", help="the field of a .jsonl object holding its text"
    )
    parser.add_argument(
        "--input-sentence-size", type=int, default=1_000_000,
        help="train on at most this many sentences, sampled at random",
    )
    parser.add_argument(
        "--byte-fallback", action="store_true", help="spell unknown characters as bytes, not <unk>"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT.model")
    args = parser.parse_args(argv)

    model_file = args.output.with_name(args.output.name + ".model")
    if model_file.exists() and not args.overwrite:
        parser.error(f"{model_file} exists; pass --overwrite to replace it")
    for path in args.inputs:
        check_nonempty_file(path, "a text or .jsonl file to train on")

    train_sentencepiece(
        training_sentences(read_texts(args.inputs, args.text_field)),
        args.output,
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        input_sentence_size=args.input_sentence_size,
        byte_fallback=args.byte_fallback,
    )
    tokenizer = SentencePieceTokenizer(model_file)
    summary = {
        "model": str(model_file),
        "vocab": str(args.output.with_name(args.output.name + ".vocab")),
        "model_type": args.model_type,
        "vocab_size": tokenizer.vocab_size,
        "inputs": [str(p) for p in args.inputs],
        **{
            f"{name}_id": getattr(tokenizer, f"{name}_id")
            for name in ("pad", "unk", "bos", "eos", "cls", "sep", "mask")
        },
    }
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    cli.run(main)
