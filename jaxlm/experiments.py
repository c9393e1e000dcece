"""Run one of the project's experiments and regenerate its tables in REPORT.md:

    jaxlm experiments q1                 # GPT vs GPT-2, sized for a 2-core CPU
    jaxlm experiments q1 --full          # the larger configuration, for an accelerator
    jaxlm experiments q1 --report        # only regenerate REPORT.md's tables from the saved JSON
    jaxlm experiments ulmfit             # the ULMFiT ablation behind questions 6-8 (q6, q7 or q8 run it too)
    jaxlm experiments smaller-distill    # question 5's smaller models, one experiment each:
    jaxlm experiments smaller-adaptive   #   distillation, adaptive softmax,
    jaxlm experiments smaller-prune      #   magnitude pruning,
    jaxlm experiments smaller-heads      #   head pruning

Questions 1-5 have one experiment each; 6, 7 and 8 share the ULMFiT ablation and its JSON; q5
also shows the four smaller-model experiments' tables, from what each saved. Results go to
experiments/results/NAME.json (and plots), the runs under --out (reruns of the ablation and the
smaller-model experiments resume there).
"""

from jaxlm import cli

HELP = "run a question's experiment and regenerate its REPORT.md tables"


def add_arguments(parser) -> None:
    from experiments import EXPERIMENTS

    parser.add_argument("question", choices=list(EXPERIMENTS), metavar="EXPERIMENT",
                        help=f"one of {', '.join(EXPERIMENTS)}")
    parser.add_argument("--full", action="store_true", help="the paper-sized configuration (for an accelerator)")
    parser.add_argument("--report", action="store_true", help="only regenerate REPORT.md from the saved JSON")
    cli.add_out(parser, "the folder of the experiment's runs", default="runs/experiments")


def run(args) -> dict:
    from experiments import run_question

    return run_question(args.question, full=args.full, report_only=args.report, runs=args.out)
