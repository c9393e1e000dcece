"""The three stages of ULMFiT (Howard & Ruder 2018) on a labelled corpus, then the test split.

    python scripts/finetune.py --task spam-assassin                 # GPT-2 of the main job
    python scripts/finetune.py --task sotu-party --pretrained path/to/hf-bert-folder

1. General-domain language model: ``--pretrained``, one of our run folders or a Hugging Face
   folder. A run folder that does not exist yet is trained with ``--pretrain-config`` first (the
   main job's config by default), or resumed if it is incomplete.
2. Target-task language-model fine-tuning on the training split's text (a decoder's next-token
   loss, an encoder's masked LM + NSP/SOP), from stage 1, with STLR and discriminative rates.
   ``--lm-steps 0`` skips it.
3. The classifier, from stage 2: concat pooling and the ULMFiT head, STLR, discriminative rates
   and gradual unfreezing (one group per stage over the first half of the steps, unless
   ``--unfreeze-every`` says otherwise).

Each stage is a run folder under ``--workdir`` (``2-lm``, ``3-classifier``); rerunning the same
command resumes or reuses them. ``--set-lm`` and ``--set`` override the stage configs' fields
(``--set classifier.head=linear``). Prints JSON: each stage's summary and the test metrics.
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

from train.config import TrainConfig, apply_overrides, load_config  # noqa: E402
from train.data.corpora import LABELLED  # noqa: E402
from train.data.downloads import cache_dir  # noqa: E402
from train.evaluation import evaluate_checkpoint  # noqa: E402
from train.finetuning import pretrained_spec  # noqa: E402
from train.loop import train  # noqa: E402
from train.tasks import DEFAULT_TASKS  # noqa: E402


def task_data(task: str | None, data: str | None) -> Path:
    """The folder with train/validation/test.jsonl: ``--data``, or a prepared corpus (prepared now if need be)."""
    if data:
        folder = Path(data)
    else:
        folder = cache_dir() / task
        if not all((folder / f"{split}.jsonl").exists() for split in ("train", "validation", "test")):
            LABELLED[task](folder)
    missing = [split for split in ("train", "validation", "test") if not (folder / f"{split}.jsonl").exists()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(s + '.jsonl' for s in missing)}")
    return folder


def general_lm(pretrained: Path, pretrain_config: str) -> dict:
    """Stage 1: a Hugging Face folder or a finished run is used as it is; a missing or incomplete
    run folder is trained (resumed) with ``pretrain_config``."""
    if (pretrained / "config.json").exists():
        return {"source": str(pretrained), "trained": False}
    config = apply_overrides(load_config(pretrain_config), [f"workdir={pretrained}", "progress_bar=false"])
    return {"source": str(pretrained), "trained": True, **train(config)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(LABELLED), help="a prepared labelled corpus (prepared if missing)")
    parser.add_argument("--data", help="or a folder with train/validation/test.jsonl")
    parser.add_argument("--label-field", default="label")
    parser.add_argument("--pretrained", default="runs/gpt2-mini-sotu", help="stage 1: our run folder or an HF folder")
    parser.add_argument("--pretrain-config", default="gpt2-mini-sotu", help="trains --pretrained if it is missing")
    parser.add_argument("--workdir", help="default: runs/ulmfit-TASK")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lm-steps", type=int, default=100, help="stage 2 steps (0: skip the stage)")
    parser.add_argument("--lm-learning-rate", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=200, help="stage 3 steps")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="stage 3 peak rate (of the top group)")
    parser.add_argument("--unfreeze-every", default="auto",
                        help="stage 3 steps per unfreezing stage, 'epoch', or 'auto': steps / (2 x (groups - 1))")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set-lm", action="append", default=[], metavar="KEY=VALUE", help="override a stage 2 field")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a stage 3 field")
    args = parser.parse_args(argv)
    if not (args.task or args.data):
        parser.error("give --task or --data")
    data = task_data(args.task, args.data)
    workdir = Path(args.workdir or f"runs/ulmfit-{args.task or data.name}")
    pretrained = Path(args.pretrained)
    result = {"stages": {"1-general-lm": general_lm(pretrained, args.pretrain_config)}}

    spec = pretrained_spec(pretrained)
    common = dict(**spec, seq_len=args.seq_len, batch_size=args.batch_size, seed=args.seed, warmup_steps=0,
                  lr_schedule="stlr", discriminative_factor=2.6, weight_decay=0.01, b2=0.99,
                  train_data=str(data / "train.jsonl"), eval_data=str(data / "validation.jsonl"),
                  progress_bar=False, log_every=10)
    source = pretrained
    if args.lm_steps:
        family = TrainConfig(**spec).model_config().family
        lm = TrainConfig(**common, task=DEFAULT_TASKS[family], init_from=str(pretrained), steps=args.lm_steps,
                         learning_rate=args.lm_learning_rate, eval_every=args.lm_steps, checkpoint_every=args.lm_steps,
                         workdir=str(workdir / "2-lm"))
        lm = apply_overrides(lm, args.set_lm)
        result["stages"]["2-lm"] = train(lm)
        source = workdir / "2-lm"

    every = args.unfreeze_every
    if every == "auto":
        groups = TrainConfig(**spec).model_config().head_depth + 1
        every = max(1, args.steps // (2 * (groups - 1)))
    classifier = TrainConfig(
        **common, task="classify", label_field=args.label_field, init_from=str(source), steps=args.steps,
        learning_rate=args.learning_rate, unfreeze_every=every if every == "epoch" else int(every),
        classifier={"pooling": "concat", "head": "ulmfit"}, eval_every=args.steps, checkpoint_every=args.steps,
        workdir=str(workdir / "3-classifier"),
    )
    classifier = apply_overrides(classifier, args.set)
    result["stages"]["3-classifier"] = train(classifier)
    result["test"] = evaluate_checkpoint(workdir / "3-classifier", str(data / "test.jsonl"), split="test")
    result["test"].pop("model_config")
    (workdir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    cli.run(main)
