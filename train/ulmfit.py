"""The three stages of ULMFiT (Howard & Ruder 2018) on a labelled corpus, then its test split.

1. General-domain language model: a pretrained run folder or Hugging Face folder, only read;
   without one, a run of ``pretrain_config`` trained (or resumed) under ``out/1-general-lm``.
2. Target-task language-model fine-tuning on the training split's text (a decoder's next-token
   loss, an encoder's masked LM + NSP/SOP), from stage 1, with STLR and discriminative rates:
   ``out/2-lm``.
3. The classifier, from stage 2: concat pooling and the ULMFiT head, STLR, discriminative rates
   and gradual unfreezing (one group per stage over the first half of the steps unless
   ``optimizer.unfreeze_every`` is set): ``out/3-classifier``.

Each stage's run config is :func:`stage_configs`'s, changed by dotted paths: ``lm.PATH`` for
stage 2, ``classifier.PATH`` for stage 3, a bare ``PATH`` for both. Rerunning resumes or reuses
the stages; every output is under ``out``.
"""

from __future__ import annotations

import json
from pathlib import Path

from train.config import DataConfig, TrainConfig, load_config
from train.data.corpora import LABELLED
from train.data.documents import SPLITS
from train.data.downloads import cache_dir
from train.evaluation import evaluate_checkpoint
from train.finetuning import pretrained_spec
from train.loop import train
from train.tasks import DEFAULT_TASKS

STAGES = ("lm", "classifier")


def task_data(task: str | None, data: str | None) -> Path:
    """The folder with train/validation/test.jsonl: ``data``, or a prepared corpus (prepared now if need be)."""
    if data:
        folder = Path(data)
    else:
        folder = cache_dir() / task
        if not all((folder / f"{split}.jsonl").exists() for split in SPLITS):
            LABELLED[task](folder)
    missing = [split for split in SPLITS if not (folder / f"{split}.jsonl").exists()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(s + '.jsonl' for s in missing)}: give a prepared corpus's "
                                "folder (jaxlm prepare)")
    return folder


def split_changes(changes: dict) -> dict[str, dict]:
    """``{path: value}`` with optional ``lm.``/``classifier.`` prefixes -> each stage's changes."""
    out = {stage: {} for stage in STAGES}
    for path, value in changes.items():
        stage, _, rest = path.partition(".")
        for target in ([stage] if stage in STAGES and rest else STAGES):
            out[target][rest if stage in STAGES and rest else path] = value
    return out


def stage_configs(body: dict, data: Path, out: Path, source: str, changes: dict, seed: int = 0) -> dict[str, TrainConfig]:
    """Stage 2's and 3's run configs: ``body`` (``pretrained_spec``'s model and tokenizer), the
    corpus folder ``data``, the stage-1 weights ``source``, and ``changes`` (see :func:`split_changes`)."""
    per_stage = split_changes(changes)
    # 128-token sequences, or the model's whole context if shorter (changes apply on top).
    seq_len = min(128, body["model"].n_positions)
    common = TrainConfig(model=body["model"], data=DataConfig(seq_len=seq_len, batch_size=16)).replace({
        "data.tokenizer": body["data.tokenizer"], "data.train": str(data / "train.jsonl"),
        "data.eval": str(data / "validation.jsonl"), "seed": seed, "optimizer.schedule": "stlr",
        "optimizer.warmup_steps": 0, "optimizer.discriminative_factor": 2.6, "optimizer.weight_decay": 0.01,
        "optimizer.b2": 0.99, "optimizer.learning_rate": 1e-3, "log.progress_bar": False, "log.every": 10,
    })
    lm = common.replace({"task.name": DEFAULT_TASKS[common.model.family], "init_from": source, "steps": 100,
                         "run_dir": str(out / "2-lm"), **per_stage["lm"]})
    lm = lm.replace({"log.eval_every": lm.steps, "checkpoint.every": lm.steps, **per_stage["lm"]})
    classifier = common.replace({"task.name": "classify", "init_from": str(out / "2-lm"), "steps": 200,
                                 "task.classifier": {"pooling": "concat", "head": "ulmfit"},
                                 "run_dir": str(out / "3-classifier"), **per_stage["classifier"]})
    steps = classifier.steps
    fixed = {"log.eval_every": steps, "checkpoint.every": steps}
    if "optimizer.unfreeze_every" not in per_stage["classifier"] and not classifier.optimizer.feature_extraction:
        groups = classifier.model.head_depth + 1
        fixed["optimizer.unfreeze_every"] = max(1, steps // (2 * (groups - 1)))
    return {"lm": lm, "classifier": classifier.replace({**fixed, **per_stage["classifier"]})}


def general_lm(pretrained: str | None, pretrain_config: str, out: Path) -> tuple[str, dict]:
    """Stage 1: ``pretrained`` as it is (only read), or a run of ``pretrain_config`` trained (or
    resumed) in ``out/1-general-lm`` -> ``(its folder, its summary)``."""
    if pretrained is not None:
        path = Path(pretrained)
        if not ((path / "run.json").exists() or (path / "config.json").exists()):
            raise FileNotFoundError(f"--pretrained {pretrained} is neither a run folder (run.json) nor a Hugging Face "
                                    f"folder (config.json); leave it out to train the general LM in {out / '1-general-lm'}")
        return str(path), {"source": str(path), "trained": False}
    config = load_config(pretrain_config).replace({"run_dir": str(out / "1-general-lm"), "log.progress_bar": False})
    return config.run_dir, {"source": config.run_dir, "trained": True, **train(config)}


def _preempted(result: dict) -> bool:
    return any(stage.get("preempted") for stage in result["stages"].values())


def finetune(data: Path, out: Path, *, pretrained: str | None = None, pretrain_config: str = "gpt2-mini-sotu",
             changes: dict | None = None, lm_stage: bool = True, seed: int = 0) -> dict:
    """Run the stages (see the module docstring) and score the test split -> each stage's summary
    and the test metrics, also written to ``out/result.json``."""
    source, summary = general_lm(pretrained, pretrain_config, out)
    result = {"stages": {"1-general-lm": summary}}
    if _preempted(result):
        return result
    configs = stage_configs(pretrained_spec(source), data, out, source, changes or {}, seed)
    if lm_stage:
        result["stages"]["2-lm"] = train(configs["lm"])
    else:
        configs["classifier"] = configs["classifier"].replace({"init_from": source})
    if not _preempted(result):
        result["stages"]["3-classifier"] = train(configs["classifier"])
    if _preempted(result):  # SIGTERM saved a stage: rerunning resumes it, then goes on
        return result
    result["test"] = evaluate_checkpoint(out / "3-classifier", str(data), split="test")
    result["test"].pop("model_config")
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
