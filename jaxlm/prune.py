"""Remove a trained GPT run's least important attention heads (Michel et al. 2019) into a new
run folder (the run itself is only read):

    jaxlm prune runs/gpt2-mini-sotu --out runs/gpt2-mini-sotu-8heads --heads 8
    jaxlm prune runs/gpt2-mini-sotu --out runs/pruned --heads 1 --per-layer   # scanned models

The new folder evaluates, generates and converts (jaxlm convert to-hf) like any run.
"""

from jaxlm import cli

HELP = "remove a GPT run's least important attention heads"


def add_arguments(parser) -> None:
    parser.add_argument("run", help="a GPT run folder trained with the lm task")
    cli.add_out(parser, "the new run folder (absent or empty)", required=True)
    parser.add_argument("--heads", type=int, required=True, help="heads to remove (in all, or per layer)")
    parser.add_argument("--per-layer", action="store_true", help="remove --heads from every layer (scanned models)")
    parser.add_argument("--batches", type=int, default=4, help="16-sequence training batches scoring the heads")


def run(args) -> dict:
    from train.heads import prune_run

    config = prune_run(args.run, args.out, args.heads, args.per_layer, args.batches)
    return {"out": args.out, "pruned_heads": [list(h) for h in config.pruned_heads]}
