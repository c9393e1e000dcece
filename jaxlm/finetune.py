"""The three stages of ULMFiT (Howard & Ruder 2018) on a labelled corpus, then its test split
(train.ulmfit): the general-domain LM, target-task LM fine-tuning (--out/2-lm), the classifier
(--out/3-classifier); the test metrics go to --out/result.json. Rerunning resumes.

    jaxlm finetune --task spam-assassin --pretrained runs/gpt2-mini-sotu
    jaxlm finetune --task sotu-party --pretrained path/to/hf-bert-folder --set classifier.steps=400
    jaxlm finetune --data my-corpus/ --set lm.optimizer.learning_rate=3e-4 --set data.seq_len=256

--pretrained is only read; without it the general LM is trained under --out/1-general-lm with
--pretrain-config. --set changes a stage's run config: lm.PATH for stage 2, classifier.PATH for
stage 3, a bare PATH for both.
"""

from jaxlm import cli

HELP = "ULMFiT's three stages on a labelled corpus"


def add_arguments(parser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--task", choices=["spam-assassin", "sotu-party"], help="a prepared corpus (prepared if missing)")
    where.add_argument("--data", help="or a folder with train/validation/test.jsonl")
    parser.add_argument("--pretrained", help="stage 1: a run folder of ours or a Hugging Face folder (only read)")
    parser.add_argument("--pretrain-config", default="gpt2-mini-sotu",
                        help="without --pretrained: the config of the general LM trained under --out/1-general-lm")
    parser.add_argument("--no-lm", action="store_true", help="skip stage 2: the classifier starts from stage 1")
    cli.add_out(parser, "the fine-tuning run's folder (default: runs/ulmfit-TASK)")
    cli.add_set(parser, "a stage's run config field (lm.PATH, classifier.PATH, or PATH for both)")
    cli.add_seed(parser, default=0)


def run(args) -> dict:
    from pathlib import Path

    from train.config import parse_overrides
    from train.ulmfit import finetune, task_data

    data = task_data(args.task, args.data)
    out = Path(args.out or f"runs/ulmfit-{args.task or data.name}")
    return finetune(data, out, pretrained=args.pretrained, pretrain_config=args.pretrain_config,
                    changes=parse_overrides(args.set), lm_stage=not args.no_lm, seed=args.seed)
