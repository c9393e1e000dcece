"""Train a model, or resume the run in its folder: rerunning the same command resumes from the
latest checkpoint. The run config is a registered name or a .py file with get_config(), changed
with --set by dotted paths (train.config: model, data, optimizer, task, mesh, checkpoint, log):

    jaxlm train --config gpt2-mini-sotu --set steps=100 --set optimizer.learning_rate=3e-4
    jaxlm train --config bert-mini-sotu --set mesh.data=2 --set mesh.fsdp=4 --out runs/bert

Each process of a multi-process run gets the same command plus --coordinator, --num-processes
and --process-id (or --distributed on a TPU VM pod slice; torchrun-style variables and SLURM are
read without flags).
"""

from jaxlm import cli

HELP = "train or resume a run"


def add_arguments(parser) -> None:
    cli.add_run_config(parser, default="gpt2-mini-sotu")
    cli.add_out(parser, "the run folder (default: the config's run_dir)")
    cli.add_seed(parser)
    parser.add_argument("--print-config", action="store_true", help="print the resolved run config and exit")
    multi = parser.add_argument_group("several processes (train.distributed)")
    multi.add_argument("--coordinator", metavar="HOST:PORT", help="where process 0 runs the coordinator")
    multi.add_argument("--num-processes", type=int, help="how many processes the run has")
    multi.add_argument("--process-id", type=int, help="this process's number, 0 .. num-processes - 1")
    multi.add_argument("--distributed", action="store_true",
                       help="let JAX find the cluster (TPU VM pod slices, SLURM, Open MPI, Kubernetes)")


def run(args) -> dict | None:
    config = cli.run_config(args)
    if args.print_config:
        return config.to_dict()
    import logging

    import jax

    from train import distributed
    from train.loop import train

    distributed.initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
    if jax.process_index() != 0:  # only process 0 logs and prints
        logging.getLogger().setLevel(logging.WARNING)
    summary = train(config)
    return summary if jax.process_index() == 0 else None
