"""Evaluate a checkpoint on held-out data and print JSON: loss, perplexity and tokens for a
language model; accuracy, macro-F1 and per-class counts for a classifier; and the model config.

    python scripts/evaluate.py runs/gpt2-mini-sotu --data ~/.cache/jaxlm/sotu/validation.jsonl
    python scripts/evaluate.py path/to/hf-gpt2 --data valid.jsonl --tokenizer path/to/hf-gpt2
    python scripts/evaluate.py runs/ulmfit-spam/3-classifier --data ~/.cache/jaxlm/spam-assassin/test.jsonl --split test
"""

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.quantize import QUANTIZATIONS  # noqa: E402
from train import cli  # noqa: E402
from train.evaluation import evaluate_checkpoint


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a run folder of ours (run.json) or a Hugging Face folder (config.json)")
    parser.add_argument("--data", required=True, help="text/JSONL/Parquet/CSV file(s), or a dataset name")
    parser.add_argument("--tokenizer", help="default: the run's tokenizer (required for HF folders)")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--task", choices=["lm", "mlm", "mlm_nsp", "mlm_sop", "classify"],
                        help="default: the run's, else lm for GPT, mlm_nsp for BERT, mlm_sop for ALBERT")
    parser.add_argument("--split", default="validation", help="the name of the data's split, for messages and the cache")
    parser.add_argument("--seq-len", type=int, help="default: the run's, else the model's context")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batches", type=int)
    parser.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    parser.add_argument("--unigram-baseline", metavar="TRAIN_DATA",
                        help="also report a unigram model of TRAIN_DATA on the same tokens (needs a full pass)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="parameters and compute (default: the run's)")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, help="int8 dense and embedding weights")
    args = parser.parse_args(argv)
    result = evaluate_checkpoint(
        args.checkpoint, args.data, tokenizer=args.tokenizer, task=args.task, seq_len=args.seq_len, batch_size=args.batch_size,
        text_field=args.text_field, max_batches=args.max_batches, step=args.step, split=args.split,
        unigram_from=args.unigram_baseline, dtype=args.dtype, quantize=args.quantize,
    )
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    cli.run(main)
