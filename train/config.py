"""Training run configs: a plain dataclass, named presets, and ``key=value`` overrides.

A config is chosen by name (``gpt2-mini-sotu``) or by a Python file defining ``get_config()``,
then adjusted from the command line: ``--set steps=500 --set model_overrides.n_layer=2``.
Values are parsed as JSON where they parse (numbers, booleans, null, lists), else kept as text.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import typing
from pathlib import Path
from typing import Callable

import optim
from models.classifier import ClassifierConfig
from models.registry import check_type, get_config
from optim.pruning import PruningConfig
from train.data.downloads import cache_dir
from train.sharding import check_mesh_axes


@dataclasses.dataclass
class TrainConfig:
    # Model: a preset name from models.PRESETS plus field overrides.
    model: str = "gpt2-mini"
    model_overrides: dict = dataclasses.field(default_factory=dict)
    # Start from pretrained weights: one of our run folders or a Hugging Face folder of the same
    # architecture. A new head is initialised; init.json in the run folder lists what was loaded,
    # what is new and what went unused. (ULMFiT's stages 2, LM fine-tuning, and 3, classifier.)
    init_from: str | None = None
    # Task: how batches are built and what loss is minimised (train.task_registry.ALL_TASKS).
    task: str = "lm"
    train_data: str = ""
    eval_data: str | None = None
    text_field: str = "text"
    # Classification (task "classify"): the label column, and the classifier put on the model:
    # models.ClassifierConfig's pooling (concat, last, first, mean, pooler), head (linear, ulmfit),
    # hidden and dropout.
    label_field: str = "label"
    classifier: dict = dataclasses.field(default_factory=dict)
    # Read the training data as a stream, tokenised on the fly (for corpora too large to
    # tokenise up front; the language-modelling task). Each host's stream position is its own:
    # exact resumption is guaranteed on one host.
    streaming: bool = False
    tokenizer: str = ""
    # Masked-LM tasks (mlm_nsp, mlm_sop): selection rate, whole words, ALBERT's n-grams (max n).
    mask_rate: float = 0.15
    whole_word_masking: bool = False
    max_ngram: int = 1
    seq_len: int = 256
    batch_size: int = 16  # global, summed over hosts and accumulation steps
    grad_accum: int = 1
    steps: int = 1000
    # Optimizer: AdamW with warmup then decay, global-norm clipping.
    learning_rate: float = 3e-4
    lr_schedule: str = "cosine"  # cosine, linear, constant (after warmup_steps) or stlr
    warmup_steps: int = 100
    end_lr_ratio: float = 0.1
    # Slanted triangular rates (lr_schedule="stlr", which warms up by itself: warmup_steps=0).
    stlr_cut_frac: float = 0.1
    stlr_ratio: float = 32.0
    # ULMFiT's depth-wise methods (optim.depths; depths from models.param_depths). Each group
    # trains discriminative_factor times slower than the one above it (2.6 in the paper, 1: off).
    discriminative_factor: float = 1.0
    # Gradual unfreezing: steps per stage, or "epoch"; 0: every group trains from the start.
    # unfreeze_stages caps the stages (default: one per group, the last unfreezing the rest).
    unfreeze_every: int | str = 0
    unfreeze_stages: int | None = None
    # Fixed feature extraction: only the top group (the heads) trains.
    feature_extraction: bool = False
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    clip_norm: float = 1.0
    # Gradual magnitude pruning: optim.PruningConfig's fields (target_sparsity, begin_step,
    # end_step, every, initial_sparsity, pattern); empty: no pruning.
    pruning: dict = dataclasses.field(default_factory=dict)
    # Knowledge distillation (task "distill"): train.distill.DistillConfig's fields (teacher,
    # temperature, alpha, task).
    distill: dict = dataclasses.field(default_factory=dict)
    seed: int = 0
    # Devices: mesh axis sizes (train.sharding: data, fsdp, model), -1 for "all remaining
    # devices", e.g. {"data": 2, "fsdp": 2, "model": 2}; absent axes have size 1.
    mesh: dict = dataclasses.field(default_factory=lambda: {"data": -1, "fsdp": 1, "model": 1})
    # Bookkeeping.
    workdir: str = "runs/default"
    log_every: int = 10
    eval_every: int = 200
    eval_max_batches: int | None = None
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    progress_bar: bool = True

    # Fields that may change when a run is resumed; every other field must match. A run resumed
    # on another mesh continues within fp32 reduction tolerance of one that never moved.
    RESUMABLE = (
        "steps", "log_every", "eval_every", "eval_max_batches", "checkpoint_every", "keep_checkpoints",
        "async_checkpoints", "progress_bar", "eval_data", "workdir", "mesh",
    )

    def __post_init__(self):
        positive = ("seq_len", "batch_size", "grad_accum", "steps", "log_every", "eval_every", "checkpoint_every",
                    "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must lie in [0, steps={self.steps}]")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum}")
        self.model_config()  # an unknown preset or a bad model override fails here, before any work
        check_mesh_axes(self.mesh)
        self._check_finetuning()
        self.pruning_config()

    def _check_finetuning(self) -> None:
        """The schedule and the ULMFiT settings, before any work."""
        schedules = (*optim.SCHEDULES, "stlr")
        if self.lr_schedule not in schedules:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of {schedules}")
        if self.lr_schedule == "stlr":
            if self.warmup_steps:
                raise ValueError(f"lr_schedule='stlr' rises over its first stlr_cut_frac of the steps by itself; "
                                 f"set warmup_steps=0 (it is {self.warmup_steps})")
            optim.stlr(self.steps, self.learning_rate, self.stlr_cut_frac, self.stlr_ratio)
        if not self.discriminative_factor > 0:
            raise ValueError(f"discriminative_factor={self.discriminative_factor} must be positive (2.6 in ULMFiT, 1: off)")
        every = self.unfreeze_every
        if not (every == "epoch" or (isinstance(every, int) and not isinstance(every, bool) and every >= 0)):
            raise ValueError(f"unfreeze_every={every!r}: give a number of steps per stage (0: off) or 'epoch'")
        if self.unfreeze_stages is not None and not every:
            raise ValueError("unfreeze_stages needs gradual unfreezing: set unfreeze_every too")
        if self.feature_extraction and every:
            raise ValueError("feature_extraction freezes all but the top group for the whole run; "
                             "it cannot be combined with gradual unfreezing (unfreeze_every)")
        if self.task == "classify" or (self.task == "distill" and self.classifier):  # a classifier student
            try:
                ClassifierConfig(self.model_config(), ("a", "b"), **self.classifier)
            except TypeError as e:
                fields = [f.name for f in dataclasses.fields(ClassifierConfig) if f.name not in ("body", "labels")]
                raise ValueError(f"classifier settings {self.classifier}: {e}; valid keys: {fields}") from None
        elif self.classifier:
            raise ValueError(f"classifier settings {self.classifier} apply to task='classify' (or 'distill' from a "
                             f"classifier) only (task is {self.task!r})")

    def pruning_config(self):
        """``pruning`` as an ``optim.PruningConfig`` (None when empty), checked."""
        return section(PruningConfig, self.pruning, "pruning") if self.pruning else None

    def model_config(self):
        """The model's config: the preset ``model`` with ``model_overrides``, type-checked."""
        return get_config(self.model, **self.model_overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self) -> dict:
        """The fields that define a run: a checkpoint of another identity is never resumed."""
        return {k: v for k, v in self.to_dict().items() if k not in self.RESUMABLE}

    @classmethod
    def identity_defaults(cls) -> dict:
        """Default values of the identity fields (what a run saved before a field existed had)."""
        return cls().identity()


def section(cls, values: dict, name: str):
    """A dict field of the run config as the dataclass ``cls``: unknown keys and values of the
    wrong type are named in the error."""
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{name} has no field(s) {unknown}; valid fields: {', '.join(fields)}")
    return cls(**{k: check_type(v, hints[k], f"{name}.{k}") for k, v in values.items()})


CONFIGS: dict[str, Callable[[], TrainConfig]] = {}


def register(name: str):
    def wrap(fn):
        CONFIGS[name] = fn
        return fn

    return wrap


def _on_sotu(**fields) -> TrainConfig:
    """A config on the State of the Union split, its 8k-piece sentencepiece model and 16 x 128-token
    batches at learning rate 1e-3; ``fields`` give the rest."""
    sotu = cache_dir() / "sotu"
    return TrainConfig(
        train_data=str(sotu / "train.jsonl"),
        eval_data=str(sotu / "validation.jsonl"),
        tokenizer=str(sotu / "spm8k.model"),
        seq_len=128,
        batch_size=16,
        learning_rate=1e-3,
        **fields,
    )


@register("gpt2-mini-sotu")
def gpt2_mini_sotu() -> TrainConfig:
    """The main job: a 4-layer GPT-2 on the State of the Union addresses, a few minutes on a CPU."""
    return _on_sotu(
        model="gpt2-mini",
        model_overrides={"n_positions": 128},
        steps=300,
        warmup_steps=30,
        eval_every=100,
        checkpoint_every=100,
        workdir="runs/gpt2-mini-sotu",
    )


def _encoder_on_sotu(model: str, task: str, workdir: str, **overrides) -> TrainConfig:
    return _on_sotu(
        model=model,
        model_overrides={"vocab_size": 8192, "n_positions": 128},
        task=task,
        steps=600,
        warmup_steps=60,
        weight_decay=0.01,
        b2=0.999,
        eval_every=200,
        checkpoint_every=100,
        workdir=workdir,
        **overrides,
    )


@register("bert-mini-sotu")
def bert_mini_sotu() -> TrainConfig:
    """BERT (4 layers, 256 wide) pretrained with masked LM + next-sentence prediction on SOTU."""
    return _encoder_on_sotu("bert-mini", "mlm_nsp", "runs/bert-mini-sotu")


@register("albert-mini-sotu")
def albert_mini_sotu() -> TrainConfig:
    """ALBERT (one shared layer group, 128-wide embeddings) with masked LM (n-grams up to 3) +
    sentence-order prediction on SOTU."""
    return _encoder_on_sotu(
        "albert-tiny", "mlm_sop", "runs/albert-mini-sotu", max_ngram=3,
    )


def load_config(name_or_path: str) -> TrainConfig:
    """A registered config by name, or ``get_config()`` from a Python file."""
    if name_or_path in CONFIGS:
        return CONFIGS[name_or_path]()
    path = Path(name_or_path)
    if path.suffix != ".py":
        raise ValueError(
            f"unknown config {name_or_path!r}: give a registered name ({', '.join(sorted(CONFIGS))}) "
            "or a .py file that defines get_config()"
        )
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist: give an existing .py file that defines get_config(), "
                         f"or a registered name ({', '.join(sorted(CONFIGS))})")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ValueError(f"config file {path} defines no get_config(): add one that returns a train.config.TrainConfig")
    config = module.get_config()
    if not isinstance(config, TrainConfig):
        raise ValueError(f"get_config() in {path} returned a {type(config).__name__}, not a TrainConfig: "
                         "return train.config.TrainConfig(...)")
    return config


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ``key=value`` strings; ``a.b=value`` sets a key inside a dict field.

    Values parse as JSON where they can (text fields take the text as it is) and must have the
    field's type: ``--set steps=abc`` names the field and the type it expects.
    """
    values = config.to_dict()
    hints = typing.get_type_hints(TrainConfig)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not of the form key=value")
        head, _, sub = key.partition(".")
        if head not in hints:
            raise ValueError(f"unknown config field {head!r}; valid fields: {', '.join(sorted(hints))}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if sub:
            if not isinstance(values[head], dict):
                raise ValueError(f"{head} is not a dict field; use {head}=value")
            values[head] = {**values[head], sub: value}
        elif hints[head] in (str, str | None) and raw != "null":
            values[head] = raw
        else:
            values[head] = check_type(value, hints[head], f"--set {head}")
    return TrainConfig(**values)
