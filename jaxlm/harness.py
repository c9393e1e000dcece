"""Run EleutherAI's lm-evaluation-harness tasks on a decoder checkpoint (``train.harness``):

    jaxlm harness runs/gpt2-mini-sotu --tasks sotu_mc,sotu_ppl --include-path tests/data/lm_eval
    jaxlm harness path/to/hf-gpt2 --tasks lambada_openai --limit 100 --batch-size 16 --out lambada.json

Prints the harness's results table; --out also writes its results as JSON. Needs lm-eval
(pip install -e .[eval]); a task whose data lives on the Hugging Face hub downloads it, a task
folder given with --include-path may read local files (tests/data/lm_eval: JSON Lines files,
their paths relative to the repository's root).
"""

from jaxlm import cli

HELP = "run lm-evaluation-harness tasks on a decoder"


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="a run folder of ours or a Hugging Face GPT/GPT-2 folder")
    parser.add_argument("--tasks", required=True, metavar="NAME[,NAME]", help="harness task (or group) names")
    parser.add_argument("--include-path", metavar="DIR", help="a folder of task YAML files, besides the harness's own")
    parser.add_argument("--limit", type=int, help="documents per task, at most (default: all)")
    parser.add_argument("--num-fewshot", type=int, help="examples in each prompt (default: the task's)")
    parser.add_argument("--batch-size", type=int, default=8, help="requests scored or decoded together")
    parser.add_argument("--tokenizer", help="default: the run's, or a Hugging Face folder's own")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="parameters and compute (default: the run's)")
    cli.add_seed(parser, default=0)
    cli.add_out(parser, "also write the harness's results as JSON to this file")


def run(args) -> None:
    import json
    from pathlib import Path

    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import make_table
    except ImportError:
        raise ValueError("jaxlm harness needs lm-evaluation-harness: pip install -e .[eval]") from None
    from train.harness import JaxLM

    model = JaxLM(args.checkpoint, step=args.step, tokenizer=args.tokenizer, batch_size=args.batch_size,
                  dtype=args.dtype, seed=args.seed)
    names = [name for name in args.tasks.split(",") if name]
    tasks = TaskManager(include_path=args.include_path)
    unknown = [name for name in names if name not in tasks.all_tasks]
    if unknown:
        raise ValueError(f"no harness task named {', '.join(unknown)}: check --tasks, or give the folder of its YAML "
                         "with --include-path")
    results = lm_eval.simple_evaluate(model=model, tasks=names, num_fewshot=args.num_fewshot, limit=args.limit,
                                      task_manager=tasks, random_seed=args.seed, numpy_random_seed=args.seed,
                                      fewshot_random_seed=args.seed)
    print(make_table(results))
    if args.out:
        Path(args.out).write_text(json.dumps({k: results[k] for k in ("results", "configs", "versions", "n-shot")},
                                             indent=2, default=str) + "\n")
