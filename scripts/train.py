"""Train (or resume) a model: ``python scripts/train.py --config gpt2-mini-sotu --set steps=100``.

Rerunning the same command resumes from the run folder's latest checkpoint. The mesh is one
setting: ``--set mesh.fsdp=4`` or ``--set 'mesh={"data": 2, "fsdp": 2, "model": 2}'``. Each
process of a multi-process run gets the same command plus ``--coordinator``,
``--num-processes`` and ``--process-id`` (or ``--distributed`` on a TPU VM pod slice; see
scripts/launch_tpu_pod.sh). On a CPU the process keeps freed memory for reuse
(``train/malloc.py``; ``JAXLM_MALLOC=default`` turns that off).
"""

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the repository's packages, not scripts/train.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import cli  # noqa: E402
from train.malloc import retain_freed_memory

if __name__ == "__main__":
    retain_freed_memory()  # before numpy and JAX start their threads: see train/malloc.py

import jax  # noqa: E402

from train import distributed  # noqa: E402
from train.config import CONFIGS, apply_overrides, load_config  # noqa: E402
from train.loop import train  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="gpt2-mini-sotu",
                        help=f"a registered config ({', '.join(sorted(CONFIGS))}) or a .py file with get_config()")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (repeatable); dict fields take KEY.SUB=VALUE")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    multi = parser.add_argument_group(
        "several processes (train/distributed.py; torchrun-style variables and SLURM are read without flags)")
    multi.add_argument("--coordinator", metavar="HOST:PORT", help="where process 0 runs the coordinator")
    multi.add_argument("--num-processes", type=int, help="how many processes the run has")
    multi.add_argument("--process-id", type=int, help="this process's number, 0 .. num-processes - 1")
    multi.add_argument("--distributed", action="store_true",
                       help="let JAX find the cluster (TPU VM pod slices, SLURM, Open MPI, Kubernetes)")
    args = parser.parse_args(argv)
    config = apply_overrides(load_config(args.config), args.set)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return config.to_dict()
    distributed.initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
    primary = jax.process_index() == 0
    if not primary:  # only process 0 logs
        logging.getLogger().setLevel(logging.WARNING)
    summary = train(config)
    if primary:
        print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    cli.run(main)
