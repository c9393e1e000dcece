"""Evaluate a checkpoint on held-out data: loss, perplexity and tokens for a language model;
accuracy, macro-F1 and per-class counts for a classifier; and the model config.

    jaxlm evaluate runs/gpt2-mini-sotu --data ~/.cache/jaxlm/sotu --split validation
    jaxlm evaluate runs/ulmfit-spam-assassin/3-classifier --data ~/.cache/jaxlm/spam-assassin --split test
    jaxlm evaluate path/to/hf-gpt2 --data valid.jsonl

The run's own config (task, fields, masking) applies; --set changes it (e.g. --set
data.text_field=body, --set data.batch_size=32, --set log.eval_max_batches=10).
"""

from jaxlm import cli

HELP = "evaluate a checkpoint on held-out data"


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="a run folder of ours (run.json) or a Hugging Face folder (config.json)")
    parser.add_argument("--data", required=True,
                        help="a data file, or a prepared corpus's folder (its --split file is read)")
    parser.add_argument("--split", help="the split to read from a corpus folder (default validation); with a file, "
                                        "it must be the file's split")
    parser.add_argument("--tokenizer", help="default: the run's, or a Hugging Face folder's own")
    parser.add_argument("--task", choices=["lm", "mlm", "mlm_nsp", "mlm_sop", "classify"],
                        help="default: the run's, else lm for GPT, mlm_nsp for BERT, mlm_sop for ALBERT")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--unigram-baseline", metavar="TRAIN_DATA",
                        help="also report a unigram model of TRAIN_DATA on the same tokens (a full pass)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="parameters and compute (default: the run's)")
    parser.add_argument("--quantize", choices=["int8"], help="int8 dense and embedding weights")
    cli.add_set(parser, "the run config's evaluation settings (data.*, log.eval_max_batches)")
    cli.add_out(parser, "also write the JSON result to this file")


def run(args) -> dict:
    import json
    from pathlib import Path

    from train.config import parse_overrides
    from train.data.documents import check_split
    from train.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(
        args.checkpoint, args.data, tokenizer=args.tokenizer, task=args.task, step=args.step,
        split=check_split(args.data, args.split), unigram_from=args.unigram_baseline, dtype=args.dtype,
        quantize=args.quantize, overrides=parse_overrides(args.set),
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result
