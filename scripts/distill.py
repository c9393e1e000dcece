"""Distil a teacher into a smaller student (Hinton et al. 2015) with the training loop's ``distill`` task.

    python scripts/distill.py --teacher runs/gpt2-mini-sotu --student n_layer=2 --student d_model=128 \\
        --student n_head=2 --student d_ff=512 --set workdir=runs/student

    python scripts/distill.py --teacher runs/ulmfit-spam-assassin/3-classifier --student n_layer=2

The student is the run config's model (``--config``, default the teacher run's own config) with
``--student`` field overrides; it trains on the teacher's objective and data with the loss
``alpha * T^2 * KL + (1 - alpha) * CE``. A classifier teacher (a run of task ``classify``) gives a
classifier student on the same labelled data, with its body overridden by ``--student``; the
teacher run's ``init_from`` is not inherited (it fits the teacher's shape, not the student's:
``--set init_from=RUN`` gives the student one of its own). The run folder defaults to
``TEACHER-student``; rerunning resumes, as ``scripts/train.py`` does.
"""

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the repository's packages, not scripts/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import cli  # noqa: E402
from train.malloc import retain_freed_memory

if __name__ == "__main__":
    retain_freed_memory()  # before numpy and JAX start their threads: see train/malloc.py

from train.config import CONFIGS, TrainConfig, apply_overrides, load_config  # noqa: E402
from train.loop import train  # noqa: E402


def teacher_config(teacher: str) -> TrainConfig:
    """The teacher run's own config (its run.json) but its ``init_from``, as the student's starting point."""
    run_file = Path(teacher) / "run.json"
    if not run_file.exists():
        raise ValueError(f"{teacher} is not a run folder of ours (no run.json): pass --config for the student's run")
    fields = {f for f in TrainConfig.__dataclass_fields__}
    run = {k: v for k, v in json.loads(run_file.read_text())["run"].items() if k in fields and k != "init_from"}
    return TrainConfig(**run)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="the teacher: a run folder of ours or a Hugging Face folder")
    parser.add_argument("--config", help=f"the student's run config ({', '.join(sorted(CONFIGS))} or a .py file); "
                                         "default: the teacher run's")
    parser.add_argument("--student", action="append", default=[], metavar="FIELD=VALUE",
                        help="a model field of the student (repeatable), e.g. n_layer=2")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the soft targets (1 - alpha: hard labels)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a run config field")
    args = parser.parse_args(argv)
    base = load_config(args.config) if args.config else teacher_config(args.teacher)
    overrides = [f"model_overrides.{item}" for item in args.student]
    distill = json.dumps({"teacher": args.teacher, "temperature": args.temperature, "alpha": args.alpha})
    workdir = [] if any(s.startswith("workdir=") for s in args.set) else [f"workdir={args.teacher.rstrip('/')}-student"]
    config = apply_overrides(base, ["task=distill", f"distill={distill}", *workdir, *overrides, *args.set])
    summary = train(config)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    cli.run(main)
