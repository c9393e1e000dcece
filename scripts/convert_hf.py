"""Convert between Hugging Face checkpoints and our run folders.

    python scripts/convert_hf.py to-ours path/to/hf-folder runs/gpt2-converted
    python scripts/convert_hf.py to-hf runs/gpt2-mini-sotu path/to/hf-folder [--step N]

An HF folder holds config.json + model.safetensors (or pytorch_model.bin); ours holds run.json
and an orbax checkpoint of the parameters. The HF folder written by to-hf loads with
transformers' from_pretrained. to-ours records the HF folder as the run's tokenizer.

to-hf also writes the run's tokenizer (the one run.json records, or --tokenizer) into the folder,
under the names transformers looks for:

- GPT-2's byte-level BPE (from any of the files our loader reads): vocab.json + merges.txt, and a
  tokenizer_config.json naming GPT2Tokenizer, which gives our ids (for an openai-gpt model too,
  whose own tokenizer is another BPE);
- a WordPiece vocab.txt: vocab.txt, and a tokenizer_config.json naming BertTokenizer with our
  lowercasing and accent stripping;
- a sentencepiece unigram model for ALBERT (what ALBERT was released with): spiece.model, and a
  tokenizer_config.json naming AlbertTokenizer without its default lowercasing and accent
  stripping, which gives our ids on plain text but splits special tokens written in the text
  ("[MASK]") differently;
- any other sentencepiece model (a BPE one, or one for GPT, GPT-2 or BERT): sentencepiece.model.
  transformers has no class that reads it as we do (its AlbertTokenizer reads a BPE model as
  unigram), so it is under a name no class looks for: our loader finds it, AutoTokenizer does not.

Nothing else beside the tokenizer is copied (a source HF folder's own tokenizer_config.json,
special_tokens_map.json): the tokenizer_config.json written describes the tokenizer as our loader
reads it, which is how the run tokenised its data.
"""

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sentencepiece import sentencepiece_model_pb2

import models
from models import hf
from models.heads_pruning import restore_heads
from train import cli  # noqa: E402
from train.checkpoint import load_params, save_params
from train.data.tokenizers import SentencePieceTokenizer, WordPieceTokenizer, load_tokenizer


def tokenizer_files(path, model_type: str) -> dict[str, Path | bytes]:
    """The files of the tokenizer at ``path`` for an HF folder of ``model_type``, by name."""
    tokenizer = load_tokenizer(path)
    if isinstance(tokenizer, SentencePieceTokenizer):
        proto = sentencepiece_model_pb2.ModelProto.FromString(tokenizer.sp.serialized_model_proto())
        if model_type != "albert" or proto.trainer_spec.model_type != proto.trainer_spec.UNIGRAM:
            return {"sentencepiece.model": tokenizer.model_file}  # a name no transformers class looks for
        files = {"spiece.model": tokenizer.model_file}
        config = {"tokenizer_class": "AlbertTokenizer", "do_lower_case": False, "keep_accents": True}
    elif isinstance(tokenizer, WordPieceTokenizer):
        files = {"vocab.txt": tokenizer.vocab_file}
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": tokenizer.lowercase,
                  "strip_accents": tokenizer.strip_accents}
    else:  # GPT-2's byte-level BPE, read from whichever files: written as transformers names them
        merges = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.get)
        files = {
            "vocab.json": json.dumps(tokenizer.encoder, ensure_ascii=False).encode(),
            "merges.txt": "".join(["#version: 0.2\n", *(f"{a} {b}\n" for a, b in merges)]).encode(),
        }
        config = {"tokenizer_class": "GPT2Tokenizer"}
    return {**files, "tokenizer_config.json": (json.dumps(config, indent=2) + "\n").encode()}


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
    to_hf.add_argument("--restore-heads", action="store_true",
                       help="write pruned heads back as zeros in the full shapes, for transformers 5, which has no "
                            "pruned_heads (by default: the smaller tensors and pruned_heads, as transformers 4 reads)")
    which = to_hf.add_mutually_exclusive_group()
    which.add_argument("--tokenizer", help="tokenizer to write beside the weights (default: the run's)")
    which.add_argument("--no-tokenizer", action="store_true", help="write the weights alone")
    args = parser.parse_args(argv)
    if args.direction == "to-ours":
        module, config, params = hf.load_pretrained(args.source)
        tokenizer = args.tokenizer or str(Path(args.source).absolute())
        out = save_params(args.dest, config, params, {"source": str(Path(args.source).absolute()), "tokenizer": tokenizer})
        written = {}
    else:
        module, config, params, run = load_params(args.source, args.step)
        if args.restore_heads:
            config, params = restore_heads(config, params)
        tokenizer = None if args.no_tokenizer else args.tokenizer or run.get("tokenizer")
        files = {}
        if tokenizer:
            try:
                files = tokenizer_files(tokenizer, hf.to_hf_config(config)["model_type"])
            except (OSError, ValueError) as e:
                raise ValueError(
                    f"cannot write the tokenizer {tokenizer} beside the weights ({e}); "
                    "pass --tokenizer PATH to write another, or --no-tokenizer to write the weights alone"
                ) from None
        out = hf.save_pretrained(args.dest, config, params, overwrite=args.overwrite, files=files)
        written = {"tokenizer_files": sorted(files)}
    result = {"direction": args.direction, "dest": str(out), "model": type(config).__name__,
              "params": models.count_params(params), "tokenizer": tokenizer, **written}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    cli.run(main)
