"""Run one of the project's questions and regenerate its tables in REPORT.md:

    jaxlm experiments q1            # GPT vs GPT-2, sized for a 2-core CPU
    jaxlm experiments q1 --scale    # the larger configuration, for an accelerator
    jaxlm experiments q1 --report   # only regenerate REPORT.md's tables from the saved JSON

Questions 6, 7 and 8 share one experiment (the ULMFiT ablation) and its JSON; any of them runs
it. Results go to experiments/results/ (JSON and plots), the runs under --out.
"""

from jaxlm import cli

HELP = "run a question's experiment and regenerate its REPORT.md tables"


def add_arguments(parser) -> None:
    parser.add_argument("question", choices=[f"q{i}" for i in range(1, 9)])
    parser.add_argument("--scale", action="store_true", help="the larger configuration (an accelerator)")
    parser.add_argument("--report", action="store_true", help="only regenerate REPORT.md from the saved JSON")
    cli.add_out(parser, "the folder of the experiment's runs", default="runs/experiments")


def run(args) -> dict:
    from experiments import run_question

    return run_question(args.question, scale=args.scale, report_only=args.report, runs=args.out)
