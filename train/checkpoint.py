"""Checkpoints of a run with orbax: parameters, optimizer state, step and data position.

A run's folder holds ``run.json`` (the run config, the resolved model config and, for a folder of
parameters only, where they came from; rewritten when the run resumes, with its resumable
fields) and orbax's step folders, each with three items: ``params``, ``opt_state`` and ``meta`` (JSON:
step, data-iterator state), and a fourth, ``model_state``, for models with variables besides
their parameters (a classifier head's batch statistics). Orbax writes each step to a temporary folder and renames it when
complete, so a run killed mid-save resumes from the last complete step. A folder written by a
run of another config is never reused: resuming it is refused with the differences listed.
A step that cannot be restored (damaged files) is moved aside to ``corrupt/`` in the run folder,
never deleted, and the run resumes from the newest step that restores.

Arrays are saved with their shardings: with several processes each writes only its own shards
(the run folder must then be on a filesystem every process sees), and a checkpoint restores
onto any mesh, e.g. one saved on 8 data-parallel devices onto a 2 x 2 x 2 mesh, or onto one CPU.
Process 0 alone writes ``run.json`` and holds the folder's lock.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import re
import time
from pathlib import Path

import jax
import orbax.checkpoint as ocp

import models
from models import hf, lora, quantize
from models.classifier import ClassifierConfig
from train import distributed
from train.config import FLAT_FIELDS, DataConfig, TrainConfig, config_from_record
from train.sharding import make_mesh, replicated
from train.step import params_sharding

ITEMS = ("params", "opt_state", "meta", "model_state")

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint folder that cannot be used: another run's, corrupt, or incomplete."""


def _reason(error: BaseException, step_dir: Path) -> str:
    """Why orbax could not restore a step, in one line: TensorStore's status (its code, the file
    and the last clause, without the specs it appends, often 60 lines) where one is in the chain
    of exceptions, else the type and first line of ``error``. The whole chain stays the cause."""
    chain = [error]
    while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None and cause not in chain:
        chain.append(cause)
    for e in reversed(chain):
        status = re.match(r"([A-Z_]{4,}): (.*)", str(e))
        if status:
            code, text = status.group(1), status.group(2).split(" [tensorstore_spec", 1)[0]
            files = re.findall(r'local file "([^"]+)"', text)
            where = f" reading {os.path.relpath(files[-1], step_dir)}" if files else ""
            return f"TensorStore {code}{where}: {text.rsplit(': ', 1)[-1]}"
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _cannot_restore(workdir: Path, step: int, error: BaseException) -> str:
    """One line on a step of ``workdir`` that orbax could not restore."""
    return f"checkpoint step {step} in {workdir} cannot be restored ({_reason(error, workdir / 'checkpoints' / str(step))})"


def _model_dict(model_config) -> dict:
    return models.config_to_dict(model_config)


def _normalized_model(saved):
    """A saved model config with the fields added since filled in with their defaults (as loading
    it does); as saved when it no longer loads (the differences then name the fields)."""
    try:
        return json.loads(json.dumps(_model_dict(models.config_from_dict(saved))))
    except (ValueError, TypeError, KeyError, AttributeError):
        return saved


def _differences(saved: dict, current: dict, prefix="") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: checkpoint has {a!r}, this run has {b!r}")
    return out


class Checkpoints:
    """The checkpoints of one run folder."""

    def __init__(self, run_dir, config: TrainConfig, model_config, *, keep: int, async_save: bool = True,
                 info: dict | None = None):
        """``config``: the run config, recorded in run.json with the resolved ``model_config`` (a
        classifier's, say) and ``info`` (what a parameters-only folder came from)."""
        self.workdir = Path(run_dir).absolute()
        self.config = config
        self.record = {"config": config.to_dict(), "model": _model_dict(model_config), **({"info": info} if info else {})}
        self.previous: TrainConfig | None = None  # the config run.json held before this run claimed the folder
        self._lock_file = None
        self._claim_once()
        self.manager = ocp.CheckpointManager(
            self.workdir / "checkpoints",
            item_names=ITEMS,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
                cleanup_tmp_directories=True,
            ),
        )

    def _claim_once(self) -> None:
        """Process 0 claims and locks the folder; with several processes (sharing one filesystem)
        the others then learn whether it succeeded, so that all stop on a refusal."""
        error = None
        if jax.process_index() == 0:
            try:
                self._claim()
                self._lock()
            except CheckpointError as e:
                error = e
        if error is not None:
            if jax.process_count() > 1:
                distributed.agree(False)
            raise error
        if jax.process_count() > 1 and not distributed.agree(True):
            raise CheckpointError(f"process 0 refused the run folder {self.workdir}; its message says why")

    def _claim(self) -> None:
        """Write run.json, or check that the one already there describes this same run (then
        record this run's resumable fields in it: its steps, mesh, logging)."""
        path = self.workdir / "run.json"
        if path.exists():
            try:
                saved = json.loads(path.read_text())
                self.previous = config_from_record(saved)
            except (json.JSONDecodeError, ValueError) as e:
                raise CheckpointError(f"{path} cannot be read as a run's record ({e}); choose another run_dir") from None
            # A model config field added since the run began has its default there.
            theirs = {"config": self.previous.identity(), "model": _normalized_model(saved.get("model"))}
            ours = json.loads(json.dumps({"config": self.config.identity(), "model": self.record["model"]}))
            diffs = _differences(theirs, ours)
            if diffs:
                raise CheckpointError(
                    f"{self.workdir} holds a run with a different config; refusing to touch it. Differences:\n  "
                    + "\n  ".join(diffs)
                    + "\nChoose another run_dir, or restore the config to resume that run."
                )
        elif self.workdir.exists() and any(self.workdir.iterdir()):
            raise CheckpointError(
                f"{self.workdir} is not empty and has no run.json: it is not a run folder of ours; choose another run_dir"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.record, indent=2) + "\n")
        os.replace(tmp, path)

    def _lock(self) -> None:
        """Hold an exclusive lock on the folder while this run uses it (released at exit, even on
        SIGKILL), so two processes never write the same run."""
        self._lock_file = open(self.workdir / "run.lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise CheckpointError(f"another process is training in {self.workdir}; wait for it or choose another run_dir")

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict) -> None:
        meta = {"step": int(step), "data": data_state}
        extra = {"model_state": ocp.args.StandardSave(state.model_state)} if state.model_state else {}
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(state.params),
                opt_state=ocp.args.StandardSave(state.opt_state),
                meta=ocp.args.JsonSave(meta),
                **extra,
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state):
        """Restore ``(state, data_state)`` laid out like ``abstract_state`` (arrays with shardings)."""
        extra = {"model_state": ocp.args.StandardRestore(abstract_state.model_state)} if abstract_state.model_state else {}
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    params=ocp.args.StandardRestore(abstract_state.params),
                    opt_state=ocp.args.StandardRestore(abstract_state.opt_state),
                    meta=ocp.args.JsonRestore(),
                    **extra,
                ),
            )
        except Exception as e:  # orbax raises many types for damaged files
            raise CheckpointError(_cannot_restore(self.workdir, step, e)) from e
        state = abstract_state.replace(
            step=jax.numpy.asarray(restored["meta"]["step"], jax.numpy.int32),
            params=restored["params"],
            opt_state=restored["opt_state"],
            model_state=restored["model_state"] if extra else abstract_state.model_state,
        )
        return state, restored["meta"]["data"]

    def restore_latest(self, abstract_state):
        """``(step, state, data_state)`` of the newest step that restores, or None if there is no
        step. Each newer step that fails is moved to ``corrupt/`` before the next older one is
        tried, and logged in one line (its whole error at DEBUG level); if none restores, the
        error says so and names where they went."""
        moved, restored = [], None  # moved: (error, where the step went)
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = (step, *self.restore(step, abstract_state))
                break
            except CheckpointError as e:
                moved.append((e, self._move_aside(step)))
        then = f"; resuming from step {restored[0]}" if restored else ""
        for error, dest in moved:
            log.warning("%s; moved it to %s%s", error, dest, then)
            log.debug("the error in full", exc_info=error.__cause__)
        if moved and restored is None:
            raise CheckpointError(
                f"no checkpoint in {self.manager.directory} restores; moved {len(moved)} step(s) to "
                f"{moved[0][1].parent}. Rerunning starts this run over from step 0; choose another run_dir to keep "
                "this folder as it is."
            )
        return restored

    def _move_aside(self, step: int) -> Path:
        """Move a step folder out of orbax's sight, into ``corrupt/`` of the run folder."""
        corrupt = self.workdir / "corrupt"
        dest = corrupt / f"step-{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            corrupt.mkdir(exist_ok=True)
            os.replace(self.manager.directory / str(step), dest)
        if jax.process_count() > 1:
            distributed.agree(True)  # every process waits for the move before looking again
        self.manager.reload()
        return dest

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
        if self._lock_file is not None:
            self._lock_file.close()


@dataclasses.dataclass(frozen=True)
class Source:
    """Where loaded weights came from: the folder, its kind (``run`` or ``huggingface``), the
    step, and for a run folder its run config and what a parameters-only folder recorded
    (``info``: the converted or pruned source)."""

    path: str
    kind: str
    step: int | None = None
    config: TrainConfig | None = None
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def tokenizer(self) -> str | None:
        """The tokenizer the weights were trained with: the run's, or a Hugging Face folder's own."""
        if self.config is not None:
            return self.config.data.tokenizer or None
        return self.info.get("tokenizer")

    @property
    def task(self) -> str | None:
        return self.config.task.name if self.config is not None else None


def run_config_for(model_config, run_dir, run: TrainConfig | dict | None = None) -> TrainConfig:
    """The run config a parameters-only folder records for ``model_config``: ``run``'s (a run
    config, or dotted changes to the defaults) with the model, and a classifier's task."""
    body = model_config.body if isinstance(model_config, ClassifierConfig) else model_config
    base = run if isinstance(run, TrainConfig) else TrainConfig(
        model=body, data=DataConfig(seq_len=min(DataConfig.seq_len, body.n_positions)))
    changes = {"model": body, "run_dir": str(run_dir), **(run if isinstance(run, dict) else {})}
    if isinstance(model_config, ClassifierConfig):
        changes.update({"task.name": "classify", "task.classifier": dataclasses.asdict(model_config.head_config())})
    return base.replace(changes)


def save_params(run_dir, model_config, params, run: TrainConfig | dict | None = None, info: dict | None = None) -> Path:
    """A run folder holding only parameters (step 0), e.g. converted from Hugging Face or
    pruned: what ``load_params``, evaluation and generation read. ``run``: the run config to
    record (see :func:`run_config_for`); ``info``: where the parameters came from. Refuses a
    non-empty folder, and int8 parameters: the run folder records the float model, which
    loading rebuilds."""
    if quantize.has_int8(params):
        raise ValueError("these parameters are int8: int8 weights are made at load time (jaxlm evaluate or "
                         "jaxlm generate --quantize int8), not saved; save the float parameters")
    workdir = Path(run_dir).absolute()
    if workdir.exists() and any(workdir.iterdir()):
        raise CheckpointError(f"{workdir} exists and is not empty; choose another folder")
    config = run_config_for(model_config, workdir, run)
    checkpoints = Checkpoints(workdir, config, model_config, keep=1, async_save=False, info=info)
    checkpoints.manager.save(0, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
    checkpoints.wait()
    checkpoints.close()
    return workdir


def load_params(workdir, step: int | None = None, **model_overrides):
    """Parameters of a run folder (the latest step unless ``step``) -> ``(module, model_config, params, source)``.

    For evaluation and generation: no optimizer is rebuilt. ``model_overrides`` may change how
    the model computes (e.g. ``dtype``), not the layout of its parameters.
    """
    module, model_config, variables, source = load_variables(workdir, step, **model_overrides)
    return module, model_config, variables["params"], source


def read_model_config(workdir, **model_overrides):
    """The model config recorded in a run folder's run.json -> ``(model_config, run.json's record)``."""
    run_file = Path(workdir).absolute() / "run.json"
    if not run_file.exists():
        raise CheckpointError(f"{run_file.parent} is not a run folder: no run.json in it")
    record = json.loads(run_file.read_text())
    try:
        return models.config_from_dict(record["model"], **model_overrides), record
    except ValueError as e:
        raise CheckpointError(f"{run_file}: {e}") from None


def read_run_config(workdir) -> TrainConfig:
    """The run config a run folder's run.json records (an old flat one read through
    ``train.config.FLAT_FIELDS``)."""
    model_config, record = read_model_config(workdir)
    try:
        return config_from_record(record, model_config)
    except ValueError as e:
        raise CheckpointError(f"{Path(workdir).absolute() / 'run.json'}: {e}") from None


def load_variables(workdir, step: int | None = None, **model_overrides):
    """As :func:`load_params`, with all the model's variables: ``{"params": ..., **model_state}``
    (a classifier head's batch statistics)."""
    workdir = Path(workdir).absolute()  # orbax needs absolute paths
    model_config, record = read_model_config(workdir, **model_overrides)
    run_config = read_run_config(workdir)
    manager = ocp.CheckpointManager(workdir / "checkpoints", item_names=ITEMS,
                                    options=ocp.CheckpointManagerOptions(create=False))
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        raise CheckpointError(f"{workdir} has no complete checkpoint yet")
    step = steps[0] if step is None else step
    if step not in steps:
        raise CheckpointError(f"{workdir} has no checkpoint step {step}; its steps: {', '.join(map(str, steps))}")
    module = model_config.module()
    # Restore onto this process's devices, whatever topology saved it.
    mesh = make_mesh()
    shapes = jax.eval_shape(lambda: models.init_variables(module, jax.random.key(0)))
    place = lambda shape, where: jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=where)  # noqa: E731
    items = {"params": ocp.args.StandardRestore(
        jax.tree.map(place, shapes.pop("params"), params_sharding(module, mesh)))}
    if shapes:
        items["model_state"] = ocp.args.StandardRestore(
            jax.tree.map(lambda shape: place(shape, replicated(mesh)), shapes))
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax raises many types for damaged files
        others = [s for s in steps if s != step]
        hint = (f"; its other steps: {', '.join(map(str, others))} (choose one with --step, e.g. --step {others[0]})"
                if others else "; it has no other step")
        raise CheckpointError(_cannot_restore(workdir, step, e) + hint) from e
    variables = {"params": restored["params"], **(restored["model_state"] if shapes else {})}
    info = record.get("info") or {k: v for k, v in (record.get("run") or {}).items() if k not in FLAT_FIELDS}
    return module, model_config, variables, Source(str(workdir), "run", step, run_config, info)


def load_variables_for_eval(checkpoint, step: int | None = None, **model_overrides):
    """A run folder of ours (has run.json) or an HF folder (has config.json)
    -> ``(module, model_config, variables, source)``, variables ``{"params": ..., **model_state}``."""
    path = Path(checkpoint)
    if (path / "run.json").exists():
        return load_variables(path, step, **model_overrides)
    if (path / "config.json").exists():
        if step is not None:
            raise ValueError(f"{path} is a Hugging Face folder: it holds one set of weights, no steps; drop --step")
        module, config, params = hf.load_pretrained(path, **model_overrides)
        return module, config, {"params": params}, Source(str(path), "huggingface", info={"tokenizer": str(path)})
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give a run folder of ours (run.json) or a Hugging Face folder")
    raise FileNotFoundError(f"{path} is neither a run folder (run.json) nor a Hugging Face folder (config.json)")


def load_for_eval(checkpoint, step: int | None = None, **model_overrides):
    """As :func:`load_variables_for_eval`, with the parameters only: ``(module, model_config, params, source)``.
    A run trained with LoRA adapters comes merged (``models.lora.merge``): the adapted function in
    the base model's layout, which evaluation, generation and the Hugging Face export read."""
    module, config, variables, run = load_variables_for_eval(checkpoint, step, **model_overrides)
    merged, params = lora.merged(config, variables["params"])
    return (module if merged is config else merged.module()), merged, params, run
