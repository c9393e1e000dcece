"""Run configs: one nested, typed dataclass, named presets, and ``--set path=value`` overrides.

A run config has sections: ``model`` (a family's config, ``models.config``), ``data``,
``optimizer`` (``optim.OptimizerConfig``: the schedule, ULMFiT's methods, pruning), ``task``
(its classifier or distillation), ``mesh``, ``checkpoint`` and ``log``; then the run's
``steps``, ``seed`` and output folder ``run_dir``. Every field is checked when a config is
built, before any data is read: types and ranges by each section, the rules across sections
(the schedule and the pruning window within the run, sequences within the model's context, the
classifier on the model) by ``TrainConfig``.

A config is chosen by name (``gpt2-mini-sotu``) or by a Python file defining ``get_config()``,
then adjusted with dotted paths: ``--set optimizer.learning_rate=1e-3 --set model=bert-mini
--set model.n_layer=2``. Values parse as JSON where they can (numbers, booleans, null, lists,
objects), else are taken as text; ``model=NAME`` picks a preset (``models.PRESETS``) and is
applied before the model's fields.

Typed decoding is draccus's (levanter's config library): it builds these dataclasses from
nested dicts, converting values to each field's type and naming the field's path when one does
not fit, and encodes them back for ``run.json``. Our commands keep ``--set path=value`` in front
of it because they take arguments of their own besides the run config. The model section is
decoded by the preset registry, which picks the family's class.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import typing
from pathlib import Path
from typing import Callable

import draccus
from draccus.utils import DecodingError, ParsingError

from models.classifier import ClassifierConfig, ClassifierHead
from models.config import RENAMED, TransformerConfig, renamed
from models.registry import config_classes, config_to_dict, get_config
from optim.config import OptimizerConfig
from train.data.downloads import cache_dir
from train.sharding import check_mesh_axes
from train.tasks import TASKS

TASK_NAMES = (*TASKS, "distill")  # train.task_registry.ALL_TASKS


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What the run reads and how it is cut into batches."""

    train: str = ""  # training text: a .jsonl/.txt/.parquet/.csv file (or several, comma-separated)
    eval: str | None = None  # validation text; none: no validation
    tokenizer: str = ""  # sentencepiece .model, WordPiece vocab.txt or a GPT-2 BPE folder
    text_field: str = "text"
    label_field: str = "label"  # classification: the label column
    # Read the training text as a stream, tokenised on the fly (corpora too large to tokenise up
    # front; the language-modelling task). Exact resumption is guaranteed on one host.
    streaming: bool = False
    seq_len: int = 256
    batch_size: int = 16  # global, summed over hosts and accumulation steps
    grad_accum: int = 1

    def __post_init__(self):
        for name in ("seq_len", "batch_size", "grad_accum"):
            _positive(f"data.{name}", getattr(self, name))
        if self.batch_size % self.grad_accum:
            raise ValueError(f"data.batch_size={self.batch_size} is not divisible by data.grad_accum={self.grad_accum}")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation (``task.name=distill``): the teacher (a run or Hugging Face
    folder, read only), the temperature T, the weight ``alpha`` of the soft targets (1 - alpha
    on the hard labels) and the objective (default: the teacher run's task, else its family's
    pretraining task)."""

    teacher: str = ""
    temperature: float = 2.0
    alpha: float = 0.5
    task: str | None = None

    def __post_init__(self):
        if not self.teacher:
            raise ValueError("task.name=distill needs a teacher: set task.distill.teacher to a run folder or a "
                             "Hugging Face folder")
        if not self.temperature > 0:
            raise ValueError(f"task.distill.temperature={self.temperature} must be positive (1 is the plain softmax)")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"task.distill.alpha={self.alpha} must lie in [0, 1]: the weight of the soft targets")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """What a batch is and which loss is minimised (``train.task_registry.ALL_TASKS``)."""

    name: str = "lm"  # lm, mlm, mlm_nsp, mlm_sop, classify or distill
    # Masked-LM tasks: selection rate, whole words, ALBERT's n-grams (max n).
    mask_rate: float = 0.15
    whole_word_masking: bool = False
    max_ngram: int = 1
    # Classification (and distillation into a classifier): the pooling and head put on the model.
    classifier: ClassifierHead | None = None
    distill: DistillConfig | None = None

    def __post_init__(self):
        if self.name not in TASK_NAMES:
            raise ValueError(f"unknown task.name {self.name!r}; choose one of {list(TASK_NAMES)}")
        if not 0 < self.mask_rate < 1:
            raise ValueError(f"task.mask_rate={self.mask_rate} must lie in (0, 1) (BERT's 0.15)")
        _positive("task.max_ngram", self.max_ngram)
        if self.name == "classify" and self.classifier is None:
            object.__setattr__(self, "classifier", ClassifierHead())
        if self.classifier is not None and self.name not in ("classify", "distill"):
            raise ValueError(f"task.classifier applies to task.name=classify (or distill into a classifier), not "
                             f"{self.name!r}")
        if self.name == "distill" and self.distill is None:
            raise ValueError("task.name=distill needs a teacher: set task.distill.teacher to a run folder or a "
                             "Hugging Face folder")
        if self.distill is not None and self.name != "distill":
            raise ValueError(f"task.distill applies to task.name=distill, not {self.name!r}")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Devices: the sizes of the ``data``, ``fsdp`` and ``model`` mesh axes (``train.sharding``);
    one may be -1, all remaining devices."""

    data: int = -1
    fsdp: int = 1
    model: int = 1

    def __post_init__(self):
        free = [axis for axis, size in self.sizes().items() if size == -1]
        if len(free) > 1:
            raise ValueError(f"mesh axes {' and '.join(free)} are both -1 (all remaining devices); give all but one a "
                             f"size, e.g. --set mesh.{free[0]}=1")
        check_mesh_axes(self.sizes())

    def sizes(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 200  # steps between checkpoints (the last step is always saved)
    keep: int = 3  # the newest checkpoints kept
    async_save: bool = True  # write in the background while training goes on

    def __post_init__(self):
        _positive("checkpoint.every", self.every)
        _positive("checkpoint.keep", self.keep)


@dataclasses.dataclass(frozen=True)
class LogConfig:
    every: int = 10  # steps between training metrics
    eval_every: int = 200  # steps between validations (and at the last step)
    eval_max_batches: int | None = None  # none: the whole validation split
    progress_bar: bool = True

    def __post_init__(self):
        _positive("log.every", self.every)
        _positive("log.eval_every", self.eval_every)
        if self.eval_max_batches is not None:
            _positive("log.eval_max_batches", self.eval_max_batches)


def _default_model() -> TransformerConfig:
    return get_config("gpt2-mini")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: TransformerConfig = dataclasses.field(default_factory=_default_model)
    # Start from pretrained weights (read only): one of our run folders or a Hugging Face folder of
    # the same architecture. New heads are initialised; init.json in run_dir lists what was loaded,
    # what is new and what went unused (ULMFiT's stages 2, LM fine-tuning, and 3, classifier).
    init_from: str | None = None
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)
    steps: int = 1000
    seed: int = 0
    run_dir: str = "runs/default"  # the run's folder: checkpoints, metrics, run.json

    # What may change when a run is resumed; everything else must match the saved run. A run
    # resumed on another mesh continues within fp32 reduction tolerance of one that never moved.
    RESUMABLE = ("steps", "run_dir", "mesh", "checkpoint", "log", "data.eval")

    def __post_init__(self):
        if not isinstance(self.model, TransformerConfig):
            raise ValueError(f"model must be a model config (models.get_config(NAME)), got {self.model!r}")
        _positive("steps", self.steps)
        if not self.run_dir:
            raise ValueError("run_dir is empty: give the run's folder, e.g. --set run_dir=runs/my-run")
        if self.data.seq_len > self.model.n_positions:
            raise ValueError(f"data.seq_len={self.data.seq_len} exceeds the model's context of "
                             f"{self.model.n_positions} positions; lower data.seq_len or raise model.n_positions")
        self.optimizer.check_steps(self.steps)
        if self.task.classifier is not None:
            ClassifierConfig.on(self.model, ("a", "b"), self.task.classifier)

    def to_dict(self) -> dict:
        return draccus.encode(self)

    def replace(self, changes: dict) -> "TrainConfig":
        """A copy with ``{"dotted.path": value}`` changed (values typed as the fields are; a
        model field, e.g. ``model.n_layer``, applies to this config's model)."""
        data = self.to_dict()
        for path, value in changes.items():
            _assign(data, path, value)
        return from_dict(data)

    def identity(self) -> dict:
        """The fields that define a run: a checkpoint of another identity is never resumed."""
        return _without(self.to_dict(), self.RESUMABLE)


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def _without(data: dict, paths) -> dict:
    data = json.loads(json.dumps(data))
    for path in paths:
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node.get(key) or {}
        node.pop(last, None)
    return data


def _decode_model(cls, value, path):
    """The model section: a preset name, or a config record (``models.config_to_dict``)."""
    if isinstance(value, TransformerConfig):
        return value
    if isinstance(value, str):
        return get_config(value)
    if not isinstance(value, dict):
        raise ValueError(f"model must be a preset name or a model config, got {value!r}")
    record = renamed(value)
    name = record.pop("preset_class", None)
    classes = config_classes()
    if name not in classes or not issubclass(classes[name], TransformerConfig):
        raise ValueError(f"model: unknown model config class {name!r}")
    return get_config(classes[name](), **record)


draccus.decode.register(TransformerConfig, _decode_model, include_subclasses=True)
draccus.encode.register(TransformerConfig, config_to_dict, include_subclasses=True)


def _decode_int(cls, value, path):
    """An integer field: a whole number or its text; never a boolean or a fraction."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise DecodingError(path, f"expected an integer, got {value!r}")
    return int(value)


def _decode_str(cls, value, path):
    """A text field: text or a number as text, never null (only optional fields take null)."""
    if value is None or isinstance(value, (dict, list, bool)):
        raise DecodingError(path, f"expected text, got {json.dumps(value)}")
    return str(value)


draccus.decode.register(int, _decode_int, include_subclasses=True)
draccus.decode.register(str, _decode_str, include_subclasses=True)


def from_dict(data: dict) -> TrainConfig:
    """A run config from nested values (``TrainConfig.to_dict``'s form); an error names the field."""
    try:
        return draccus.decode(TrainConfig, data)
    except (DecodingError, ParsingError) as e:
        deepest, error = e, e
        while error is not None:
            cause = error.__cause__
            if isinstance(cause, ValueError) and not isinstance(cause, ParsingError):
                if not isinstance(error, DecodingError):  # a section's own check refused its values
                    raise ValueError(str(cause)) from None
            if isinstance(error, DecodingError):
                deepest = error
            error = cause
        message = str(deepest).split("\n")[0].replace("`", "")
        message = re.sub(r" into field \"<class [^>]*>\.\w+\" of type <class '([\w.]+)'>\.?", r" (a \1 section)", message)
        raise ValueError(f"config: {message}") from None


def _section_class(path: list[str], data: dict):
    """The dataclass of the section at ``path`` (the model's from its record)."""
    if path[:1] == ["model"]:  # the model section has no sections inside
        return config_classes()[data["model"]["preset_class"]] if len(path) == 1 else None
    cls = TrainConfig
    for key in path:
        hint = typing.get_type_hints(cls)[key]
        cls = next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), hint)
    return cls


def _assign(data: dict, path: str, value) -> None:
    """Set the nested field at ``path`` (dotted) of ``data``, creating an absent optional section."""
    keys = path.split(".")
    node = data
    for depth, key in enumerate(keys):
        where = keys[:depth]
        fields = [f.name for f in dataclasses.fields(_section_class(where, data))]
        if key not in fields:
            if where == ["model"] and key in RENAMED:
                raise ValueError(f"model.{key} is named model.{RENAMED[key][0]} now")
            raise ValueError(f"unknown config field {'.'.join(keys[:depth + 1])!r}; "
                             f"{'.'.join(where) or 'the run config'} has {', '.join(fields)}")
        if depth == len(keys) - 1:
            if path == "model" and isinstance(value, (str, TransformerConfig)):  # a preset name or a model config
                value = config_to_dict(get_config(value) if isinstance(value, str) else value)
            elif dataclasses.is_dataclass(_section_class(keys, data)) and not isinstance(value, (dict, type(None))):
                raise ValueError(f"{path} is a section: set its fields ({path}.FIELD=VALUE) or give a JSON object")
            node[key] = value
        else:
            if node.get(key) is None:  # an optional section (optimizer.pruning, task.classifier, ...) not yet set
                node[key] = {}
            if not isinstance(node[key], dict):
                raise ValueError(f"{'.'.join(keys[:depth + 1])} is a value, not a section; set it as "
                                 f"{'.'.join(keys[:depth + 1])}=VALUE")
            node = node[key]


def parse_value(raw: str):
    """A command-line value: JSON where it parses (numbers, booleans, null, lists, objects), else text."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_overrides(items: list[str]) -> dict:
    """``path=value`` strings (``optimizer.learning_rate=1e-3``) -> ``{path: value}``, values as
    :func:`parse_value` reads them."""
    changes = {}
    for item in items:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip():
            raise ValueError(f"--set {item!r} is not of the form PATH=VALUE (e.g. optimizer.learning_rate=1e-3)")
        changes[path.strip()] = parse_value(raw)
    return changes


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ``path=value`` strings (``optimizer.learning_rate=1e-3``); ``model=NAME`` first."""
    changes = parse_overrides(overrides)
    ordered = sorted(changes.items(), key=lambda change: change[0] != "model")
    return config.replace(dict(ordered)) if changes else config


# Run folders written before the nested config (their run.json has a flat "run" section): each
# flat field's path today. ``model`` and ``model_overrides`` together make the model section.
FLAT_FIELDS = {
    "train_data": "data.train", "eval_data": "data.eval", "tokenizer": "data.tokenizer",
    "text_field": "data.text_field", "label_field": "data.label_field", "streaming": "data.streaming",
    "seq_len": "data.seq_len", "batch_size": "data.batch_size", "grad_accum": "data.grad_accum",
    "learning_rate": "optimizer.learning_rate", "lr_schedule": "optimizer.schedule",
    "warmup_steps": "optimizer.warmup_steps", "end_lr_ratio": "optimizer.end_lr_ratio",
    "stlr_cut_frac": "optimizer.stlr_cut_frac", "stlr_ratio": "optimizer.stlr_ratio",
    "discriminative_factor": "optimizer.discriminative_factor", "unfreeze_every": "optimizer.unfreeze_every",
    "unfreeze_stages": "optimizer.unfreeze_stages", "feature_extraction": "optimizer.feature_extraction",
    "weight_decay": "optimizer.weight_decay", "b1": "optimizer.b1", "b2": "optimizer.b2",
    "clip_norm": "optimizer.clip_norm", "pruning": "optimizer.pruning",
    "task": "task.name", "mask_rate": "task.mask_rate", "whole_word_masking": "task.whole_word_masking",
    "max_ngram": "task.max_ngram", "classifier": "task.classifier", "distill": "task.distill",
    "log_every": "log.every", "eval_every": "log.eval_every", "eval_max_batches": "log.eval_max_batches",
    "progress_bar": "log.progress_bar", "checkpoint_every": "checkpoint.every",
    "keep_checkpoints": "checkpoint.keep", "async_checkpoints": "checkpoint.async_save",
    "workdir": "run_dir", "init_from": "init_from", "steps": "steps", "seed": "seed", "mesh": "mesh",
    "model": "model", "model_overrides": "model",
}


def from_flat(run: dict, model=None) -> TrainConfig:
    """The run config of an old run.json's flat ``run`` section: its fields at their paths today,
    the ones it lacks at their defaults. ``model``: the model config run.json records, for a
    section without ``model`` (a converted or pruned folder's, which listed where it came from);
    keys of those that are no run field are left out."""
    data = TrainConfig().to_dict()
    if "model" in run:
        model = get_config(run["model"], **renamed(run.get("model_overrides") or {}))
    model = model.body if isinstance(model, ClassifierConfig) else model
    if model is not None:
        data["model"] = config_to_dict(model)
        data["data"]["seq_len"] = min(data["data"]["seq_len"], model.n_positions)
    for key, value in run.items():
        if key not in FLAT_FIELDS or FLAT_FIELDS[key] == "model":
            continue
        if key in ("pruning", "classifier", "distill") and not value:
            value = None
        *parents, last = FLAT_FIELDS[key].split(".")
        node = data
        for part in parents:
            node = node[part]
        node[last] = value
    return from_dict(data)


def config_from_record(record: dict, model=None) -> TrainConfig:
    """The run config a run.json records: today's (``config``) or an old flat ``run`` section
    (``model``: the model config it records, see :func:`from_flat`)."""
    if "config" in record:
        return from_dict(record["config"])
    return from_flat(record.get("run") or {}, model)


CONFIGS: dict[str, Callable[[], TrainConfig]] = {}


def register(name: str):
    def wrap(fn):
        CONFIGS[name] = fn
        return fn

    return wrap


def _on_sotu(changes: dict) -> TrainConfig:
    """A config on the State of the Union split, its 8k-piece sentencepiece model and 16 x 128-token
    batches at learning rate 1e-3; ``changes`` give the rest."""
    sotu = cache_dir() / "sotu"
    data = DataConfig(train=str(sotu / "train.jsonl"), eval=str(sotu / "validation.jsonl"),
                      tokenizer=str(sotu / "spm8k.model"), seq_len=128, batch_size=16)
    return TrainConfig(model=changes.pop("model"), data=data).replace({"optimizer.learning_rate": 1e-3, **changes})


@register("gpt2-mini-sotu")
def gpt2_mini_sotu() -> TrainConfig:
    """The main job: a 4-layer GPT-2 on the State of the Union addresses, a few minutes on a CPU."""
    return _on_sotu({
        "model": get_config("gpt2-mini", n_positions=128), "steps": 300, "optimizer.warmup_steps": 30,
        "log.eval_every": 100, "checkpoint.every": 100, "run_dir": "runs/gpt2-mini-sotu",
    })


def _encoder_on_sotu(preset: str, task: str, run_dir: str, **task_fields) -> TrainConfig:
    return _on_sotu({
        "model": get_config(preset, vocab_size=8192, n_positions=128), "task.name": task, "steps": 600,
        "optimizer.warmup_steps": 60, "optimizer.weight_decay": 0.01, "optimizer.b2": 0.999, "log.eval_every": 200,
        "checkpoint.every": 100, "run_dir": run_dir, **{f"task.{k}": v for k, v in task_fields.items()},
    })


@register("bert-mini-sotu")
def bert_mini_sotu() -> TrainConfig:
    """BERT (4 layers, 256 wide) pretrained with masked LM + next-sentence prediction on SOTU."""
    return _encoder_on_sotu("bert-mini", "mlm_nsp", "runs/bert-mini-sotu")


@register("albert-mini-sotu")
def albert_mini_sotu() -> TrainConfig:
    """ALBERT (one shared layer group, 128-wide embeddings) with masked LM (n-grams up to 3) +
    sentence-order prediction on SOTU."""
    return _encoder_on_sotu("albert-tiny", "mlm_sop", "runs/albert-mini-sotu", max_ngram=3)


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
