"""Train a sentencepiece tokenizer on text or JSONL files; writes OUT.model and OUT.vocab.

The special pieces are those our language models and BERT/ALBERT use (<pad>, <unk>, <s>,
<|endoftext|> as end of text, [CLS], [SEP], [MASK]). A .jsonl file gives one document per line
from its text field, any other file is plain text; training sees the lines cut at sentence ends.
"""

from pathlib import Path

from jaxlm import cli

HELP = "train a sentencepiece tokenizer"


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, help="text or .jsonl files")
    cli.add_out(parser, "the model's path without its extension: writes OUT.model and OUT.vocab", required=True)
    parser.add_argument("--vocab-size", type=int, default=32000, help="pieces in the vocabulary, special ones included")
    parser.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram", help="sentencepiece's algorithm")
    parser.add_argument("--text-field", default="text", help="the field of a .jsonl object holding its text")
    parser.add_argument("--input-sentence-size", type=int, default=1_000_000,
                        help="train on at most this many sentences, sampled at random")
    parser.add_argument("--byte-fallback", action="store_true", help="spell unknown characters as bytes, not <unk>")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT.model")


def run(args) -> dict:
    from train.data.tokenizers import train_tokenizer_files

    return train_tokenizer_files(args.inputs, Path(args.out), vocab_size=args.vocab_size, model_type=args.model_type,
                                 text_field=args.text_field, input_sentence_size=args.input_sentence_size,
                                 byte_fallback=args.byte_fallback, overwrite=args.overwrite)
