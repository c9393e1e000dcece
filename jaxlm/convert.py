"""Convert between Hugging Face folders and our run folders (the source is only read):

    jaxlm convert to-ours path/to/hf-folder --out runs/gpt2-converted
    jaxlm convert to-hf runs/gpt2-mini-sotu --out path/to/hf-folder [--step N]

A Hugging Face folder holds config.json and model.safetensors (or pytorch_model.bin); ours holds
run.json and an orbax checkpoint. The folder to-hf writes loads with transformers'
from_pretrained, and its tokenizer with AutoTokenizer (train.export says where the ids match).
"""

from jaxlm import cli

HELP = "convert checkpoints to and from Hugging Face folders"


def add_arguments(parser) -> None:
    parser.add_argument("direction", choices=["to-ours", "to-hf"], help="to-ours: HF folder -> run folder; to-hf: back")
    parser.add_argument("source", help="to-ours: a Hugging Face folder; to-hf: a run folder of ours")
    cli.add_out(parser, "the folder to write (absent or empty)", required=True)
    parser.add_argument("--step", type=int, help="to-hf: the checkpoint step (default: the latest)")
    parser.add_argument("--overwrite", action="store_true", help="to-hf: replace a non-empty --out")
    parser.add_argument("--body", action="store_true",
                        help="to-hf, a classifier run: write its body (language model or encoder) without the head")
    parser.add_argument("--restore-heads", action="store_true",
                        help="to-hf: write pruned heads back as zeros in the full shapes, for transformers 5, which has "
                             "no pruned_heads (by default: the smaller tensors and pruned_heads, as transformers 4 reads)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--tokenizer", help="to-ours: the run's tokenizer (default: the HF folder); to-hf: the tokenizer "
                                           "to write beside the weights (default: the run's)")
    which.add_argument("--no-tokenizer", action="store_true", help="to-hf: write the weights alone")


def run(args) -> dict:
    from train import export

    if args.direction == "to-ours":
        return export.to_ours(args.source, args.out, args.tokenizer)
    return export.to_hf(args.source, args.out, step=args.step, overwrite=args.overwrite, body=args.body,
                        full_heads=args.restore_heads, tokenizer=args.tokenizer, with_tokenizer=not args.no_tokenizer)
