"""Train a smaller student from a teacher (Hinton et al. 2015; the task distill, train.distill):

    jaxlm distill --teacher runs/gpt2-mini-sotu --set model.n_layer=2
    jaxlm distill --teacher runs/ulmfit-spam-assassin/3-classifier --set task.distill.temperature=4

The student's run config is the teacher run's own (its data and validation split, steps,
optimizer, classifier), or --config's; --set changes it (the student's shape under model.*, the
soft targets under task.distill.*: temperature, alpha). The teacher is only read.
"""

from jaxlm import cli

HELP = "distil a teacher run into a smaller student"


def add_arguments(parser) -> None:
    parser.add_argument("--teacher", required=True, help="a run folder of ours or a Hugging Face folder (only read)")
    cli.add_run_config(parser, default=None)
    cli.add_out(parser, "the student's run folder (default: TEACHER-student)")
    cli.add_seed(parser)


def run(args) -> dict:
    from train.config import load_config
    from train.distill import student_config
    from train.loop import train

    base = student_config(args.teacher, load_config(args.config) if args.config else None)
    return train(cli.run_config(args, base))
