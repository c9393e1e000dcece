"""What fine-tuning adds to a run: the optimizer with the depths ULMFiT's methods need, and the
start from pretrained weights (``init_from``, read only).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import optax

import models
import optim
from models import hf, lora
from models.classifier import ClassifierConfig
from models.config import TransformerConfig
from train.checkpoint import load_params, read_run_config
from train.data.tokenizers import tokenizer_id

# Config fields that change how a model computes or is laid out, not what its weights mean.
NOT_ARCHITECTURE = {
    "dtype", "param_dtype", "scan_layers", "remat", "attention", "logits_chunk", "head", "initializer_range",
    "scale_residual_init", "lora_rank", "lora_alpha", "lora_targets",
    *TransformerConfig.DROPOUTS,
}


def make_optimizer(config, model_config, steps_per_epoch: int | None = None):
    """The run's optimizer (``optim.make_optimizer`` on ``config.optimizer``), with the depths of
    ``model_config``'s parameters when the depth-wise methods need them -> ``(optimizer, schedule)``."""
    opt = config.optimizer
    body = model_config.body if isinstance(model_config, ClassifierConfig) else model_config
    if body.lora_rank and opt.needs_depths:
        raise ValueError("LoRA trains only its adapters (model.lora_rank > 0): it does not combine with gradual "
                         "unfreezing, discriminative rates or feature extraction (optimizer.unfreeze_every, "
                         "optimizer.discriminative_factor, optimizer.feature_extraction); set model.lora_rank=0 or "
                         "turn those off")
    depths = models.param_depths(model_config, models.param_shapes(model_config.module())) if opt.needs_depths else None
    stacked = r"(^|/)blocks/" if body.scan_layers else None  # a leading layers axis
    tx, schedule = optim.make_optimizer(opt, config.steps, depths, steps_per_epoch, stacked)
    if body.lora_rank:  # only the adapters (and a classifier's new head) train; the state holds those alone
        labels = lambda params: jax.tree.map(lambda t: "train" if t else "frozen", lora.trainable(params))  # noqa: E731
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx, schedule


def trainable(config, model_config, params) -> dict | None:
    """Which parameters can train at all in this run (booleans like ``params``): with feature
    extraction the heads alone, with LoRA the adapters and a classifier's head; None when every
    parameter can (gradual unfreezing thaws them all in time)."""
    body = model_config.body if isinstance(model_config, ClassifierConfig) else model_config
    if body.lora_rank:
        return lora.trainable(params)
    if config.optimizer.feature_extraction:
        depths = models.param_depths(model_config, params)
        top = optim.check_depths(depths)  # what optim.freeze leaves training
        return jax.tree.map(lambda d: bool(np.all(np.asarray(d) == top)), depths)
    return None


@dataclasses.dataclass
class Pretrained:
    """Weights to start from: their source, its kind (``run`` or ``huggingface``), their model
    config, and their parameters."""

    source: str
    kind: str
    config: object
    params: dict


def load_pretrained(source, model_config, tokenizer: str | None = None) -> Pretrained:
    """One of our run folders or a Hugging Face folder, for a run whose model is ``model_config``
    (a classifier's body counts): refused, with the differences named, if its architecture or its
    tokenizer is another."""
    path = Path(source)
    body = model_config.body if isinstance(model_config, ClassifierConfig) else model_config
    if (path / "run.json").exists():
        _, config, params, loaded = load_params(path)
        kind = "run"
        theirs = config.body if isinstance(config, ClassifierConfig) else config
        if theirs.scan_layers != body.scan_layers:
            raise ValueError(
                f"init_from {source} lays out its layers with scan_layers={theirs.scan_layers}, this run's model with "
                f"{body.scan_layers}: set model.scan_layers={str(theirs.scan_layers).lower()}"
            )
        _check_tokenizer(source, loaded.tokenizer, tokenizer)
    elif (path / "config.json").exists():
        _, config, params = hf.load_pretrained(path, scan_layers=body.scan_layers, remat=body.remat)
        kind, theirs = "huggingface", config
    else:
        raise FileNotFoundError(f"init_from {source}: neither a run folder (run.json) nor a Hugging Face folder "
                                "(config.json)")
    _check_architecture(source, theirs, body)
    return Pretrained(str(source), kind, config, params)


def _check_architecture(source, theirs, ours) -> None:
    if type(theirs) is not type(ours):
        raise ValueError(f"init_from {source} holds a {type(theirs).__name__} ({theirs.family}); this run's model is a "
                         f"{type(ours).__name__} ({ours.family}): choose a model of the same architecture")
    diffs = [f"{f.name}: init_from has {getattr(theirs, f.name)!r}, this run has {getattr(ours, f.name)!r}"
             for f in dataclasses.fields(ours)
             if f.name not in NOT_ARCHITECTURE and getattr(theirs, f.name) != getattr(ours, f.name)]
    if diffs:
        raise ValueError(f"init_from {source} has another architecture than this run's model:\n  " + "\n  ".join(diffs)
                         + "\nSet model (--set model.FIELD=VALUE) to match it.")


def _check_tokenizer(source, theirs: str | None, ours: str | None) -> None:
    if not theirs or not ours or not Path(theirs).exists():
        return
    if tokenizer_id(theirs) != tokenizer_id(ours):
        raise ValueError(f"init_from {source} was trained with the tokenizer {theirs}; this run's is {ours}, whose ids "
                         "mean other tokens: use the same tokenizer")


def init_params(pretrained: Pretrained, model_config, params) -> tuple[dict, dict]:
    """``params`` (freshly initialised, for ``model_config``) with every parameter the pretrained
    weights hold under the same path and shape -> ``(params, report)``.

    A classifier's body is matched with a language model's parameters, and a language model
    with a classifier's body. Only heads and LoRA adapters may be new (parameters at the model's
    top depth, e.g. a classifier head, or a pooler a checkpoint lacks); anything new below them is refused,
    so no layer is silently re-initialised. The report lists what was loaded, what is new and
    what in the source went unused.
    """
    source = pretrained.params
    ours_is_classifier = isinstance(model_config, ClassifierConfig)
    if ours_is_classifier and not isinstance(pretrained.config, ClassifierConfig):
        source = {"body": source}
    elif not ours_is_classifier and isinstance(pretrained.config, ClassifierConfig):
        source = source["body"]
    theirs = dict(zip(optim.param_paths(source), jax.tree.leaves(source)))
    depths = models.param_depths(model_config, params)
    top = optim.check_depths(depths)
    loaded, new, out = [], [], []
    for path, leaf, depth in zip(optim.param_paths(params), jax.tree.leaves(params), jax.tree.leaves(depths)):
        value = theirs.get(path)
        if value is None:
            new.append((path, int(np.min(depth))))
            out.append(leaf)
        elif np.shape(value) != np.shape(leaf):
            raise ValueError(f"init_from {pretrained.source}: {path} has shape {np.shape(value)}, this model's "
                             f"{np.shape(leaf)}; set model (--set model.FIELD=VALUE) to match its architecture")
        else:
            loaded.append(path)
            out.append(np.asarray(value, leaf.dtype))
    # LoRA's adapters are new by design (B = 0: the loaded model's function to start with)
    below_heads = [path for path, depth in new if depth < top and path.rsplit("/", 1)[-1] not in lora.ADAPTERS]
    if below_heads:
        raise ValueError(f"init_from {pretrained.source} lacks {len(below_heads)} parameters below the heads, which "
                         f"would be initialised anew: {below_heads[:5]}; only heads may be new")
    report = {"source": pretrained.source, "kind": pretrained.kind, "loaded": loaded, "new": [p for p, _ in new],
              "unused": sorted(set(theirs) - set(loaded))}
    return jax.tree.unflatten(jax.tree.structure(params), out), report


def write_report(workdir, report: dict) -> Path:
    path = Path(workdir) / "init.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def pretrained_spec(source) -> dict:
    """The run config changes that rebuild a pretrained source's model and name its tokenizer:
    ``model`` (its config, with its family's default heads: a task picks its heads) and
    ``data.tokenizer`` (the run's, or the Hugging Face folder's vocabulary)."""
    path = Path(source)
    if (path / "run.json").exists():
        config = read_run_config(path).model
        tokenizer = read_run_config(path).data.tokenizer
    elif (path / "config.json").exists():
        config = hf.config_from_hf(path)
        tokenizer = str(path / "vocab.txt") if (path / "vocab.txt").exists() else str(path)
    else:
        raise FileNotFoundError(f"{source}: neither a run folder (run.json) nor a Hugging Face folder (config.json)")
    if hasattr(config, "head"):
        config = dataclasses.replace(config, head=type(config)().head)
    return {"model": config, "data.tokenizer": tokenizer}
