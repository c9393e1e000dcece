"""The training loop: outputs, resumption after SIGKILL/SIGTERM/SIGINT, and refusals that lose nothing."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import config_file, jaxlm, tiny_config

from optim import OptimizerConfig
from train.checkpoint import CheckpointError, load_params, run_config_for
from train.config import TrainConfig, apply_overrides, load_config
from train.loop import NonFiniteLoss, train

REPO = Path(__file__).resolve().parents[1]
NO_EVAL = {"data.eval": None}


def test_run_writes_metrics_checkpoints_and_curve(corpus, tmp_path):
    summary = train(tiny_config(corpus, tmp_path / "run", **{"data.grad_accum": 2}))
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [2, 4, 6, 8, 10, 12]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert [r["step"] for r in rows if r["split"] == "validation"] == [6, 12]
    assert summary["validation"]["perplexity"] == pytest.approx(np.exp(summary["validation"]["loss"]))
    assert (run / "loss_curve.png").stat().st_size > 1000
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["12", "4", "8"]
    module, config, params, source = load_params(run)
    assert source.step == 12 and config.n_positions == 32
    assert source.config.steps == 12 and source.config.data.grad_accum == 2  # run.json: the whole run config


def _run_script(config_file, *extra):
    """``jaxlm train`` in a fresh process (the session's compilation cache and XLA flags: conftest)."""
    cmd = [sys.executable, "-m", "jaxlm", "train", "--config", str(config_file), *map(str, extra)]
    # Started while SIGINT is handled here: exec resets a handler to the default, but a SIGINT
    # ignored here (a background job) would stay ignored there, and Ctrl-C is tested.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)


def _write_config(corpus, path, steps):
    return config_file(path, tiny_config(corpus, path.parent / "unused", **NO_EVAL, **{
        "steps": steps, "optimizer.warmup_steps": 5, "checkpoint.every": 5, "log.every": 5}))


def _latest_step(run_dir):
    ckpts = Path(run_dir) / "checkpoints"
    steps = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.exists() else []
    return max(steps, default=0)


def _wait_for_checkpoint(run_dir, proc, timeout=120):
    deadline = time.time() + timeout
    while _latest_step(run_dir) == 0:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def _final_params(run_dir):
    return load_params(run_dir)[2]


def _assert_bitwise_equal(a, b):
    import jax

    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        assert np.array_equal(np.asarray(x), np.asarray(y)), path


@pytest.mark.slow
def test_killed_or_preempted_runs_resume_to_identical_parameters(corpus, tmp_path):
    steps = 60
    config_file = _write_config(corpus, tmp_path / "cfg.py", steps)
    reference = _run_script(config_file, "--out", tmp_path / 'ref')
    assert reference.wait() == 0, reference.stdout.read()

    # SIGKILL at a random moment after the first checkpoint, then rerun the same command.
    killed = _run_script(config_file, "--out", tmp_path / 'killed')
    _wait_for_checkpoint(tmp_path / "killed", killed)
    time.sleep(random.uniform(0.0, 1.0))
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    stopped_at = _latest_step(tmp_path / "killed")
    assert 0 < stopped_at < steps
    resumed = _run_script(config_file, "--out", tmp_path / 'killed')
    out, _ = resumed.communicate()
    assert resumed.returncode == 0, out
    assert json.loads(out[out.index("{"):])["start_step"] == stopped_at

    # SIGTERM (preemption): saves the current step and exits cleanly.
    preempted = _run_script(config_file, "--out", tmp_path / 'preempted')
    _wait_for_checkpoint(tmp_path / "preempted", preempted)
    preempted.send_signal(signal.SIGTERM)
    out, _ = preempted.communicate()
    assert preempted.returncode == 0, out
    summary = json.loads(out[out.index("{"):])
    assert summary["preempted"] and _latest_step(tmp_path / "preempted") == summary["step"] < steps
    resumed = _run_script(config_file, "--out", tmp_path / 'preempted')
    assert resumed.wait() == 0

    # Ctrl-C (SIGINT) in a single process: the same, with one line instead of the summary.
    interrupted = _run_script(config_file, "--out", tmp_path / 'interrupted')
    _wait_for_checkpoint(tmp_path / "interrupted", interrupted)
    interrupted.send_signal(signal.SIGINT)
    out, _ = interrupted.communicate()
    assert interrupted.returncode == 0 and out.splitlines()[-1].startswith("interrupted at step "), out
    stopped_at = _latest_step(tmp_path / "interrupted")
    assert f"interrupted at step {stopped_at}: saved" in out and stopped_at < steps
    resumed = _run_script(config_file, "--out", tmp_path / 'interrupted')
    out, _ = resumed.communicate()
    assert resumed.returncode == 0, out
    assert json.loads(out[out.index("{"):])["start_step"] == stopped_at

    reference_params = _final_params(tmp_path / "ref")
    for run in ("killed", "preempted", "interrupted"):
        _assert_bitwise_equal(_final_params(tmp_path / run), reference_params)


def test_ctrl_c_saves_the_step_and_says_so_in_one_line(corpus, tmp_path):
    config_file = _write_config(corpus, tmp_path / "cfg.py", steps=100_000)
    run_dir = tmp_path / "run"
    interrupted = _run_script(config_file, "--out", run_dir)
    _wait_for_checkpoint(run_dir, interrupted)
    interrupted.send_signal(signal.SIGINT)
    out, _ = interrupted.communicate(timeout=60)
    assert interrupted.returncode == 0, out
    last = out.splitlines()[-1]
    assert last.startswith("interrupted at step ") and "Traceback" not in out, out
    step = int(last.split()[3].rstrip(":"))
    assert last == f"interrupted at step {step}: saved; rerun the same command to resume"
    assert _latest_step(run_dir) == step and load_params(run_dir)[3].step == step  # what a rerun resumes from


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(corpus, tmp_path):
    config = tiny_config(corpus, tmp_path / "run", **NO_EVAL, **{
        "optimizer.learning_rate": 1e30, "optimizer.clip_norm": 1e30, "optimizer.warmup_steps": 0,
        "checkpoint.every": 1})
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss .* at step (\d+).*last good checkpoint is step"):
        train(config)
    saved = _latest_step(tmp_path / "run")
    assert saved >= 1
    params = _final_params(tmp_path / "run")
    import jax

    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


SHORT = {"steps": 4, **NO_EVAL}  # one checkpoint, at step 4


@pytest.fixture(scope="module")
def short_run(corpus, tmp_path_factory):
    """A 4-step run; tests that change it work on a copy (:func:`_copy`)."""
    run = tmp_path_factory.mktemp("short") / "run"
    train(tiny_config(corpus, run, **SHORT))
    return run


def _copy(run, dest):
    shutil.copytree(run, dest)
    return dest


def test_other_config_never_overwrites_a_run(corpus, short_run, tmp_path):
    run = short_run
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and "tb" not in p.parts}
    with pytest.raises(CheckpointError, match=r"(?s)different config.*model.d_model: checkpoint has 32, this run has 64"):
        train(tiny_config(corpus, run, **{**SHORT, "steps": 8, "model.d_model": 64}))
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and "tb" not in p.parts}
    assert before.keys() <= after.keys() and all(after[p] == before[p] for p in before)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not a run folder"):
        train(tiny_config(corpus, foreign))


def _damage(step_dir):
    for f in (step_dir / "params").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")


@pytest.mark.slow
def test_corrupt_newest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_previous(corpus, tmp_path, caplog):
    run = tmp_path / "run"
    train(tiny_config(corpus, run, steps=8, **NO_EVAL))
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "run.lock").unlink()
    _damage(run / "checkpoints" / "8")
    with caplog.at_level("WARNING", logger="train.checkpoint"):
        summary = train(tiny_config(corpus, run, steps=12, **NO_EVAL))
    assert summary["start_step"] == 4
    assert "checkpoint step 8" in caplog.text and "cannot be restored" in caplog.text
    (moved,) = (run / "corrupt").iterdir()
    assert moved.name.startswith("step-8-") and (moved / "params").is_dir()  # kept, not deleted
    # The same as resuming a copy whose step 8 was removed by hand.
    shutil.rmtree(copy / "checkpoints" / "8")
    assert train(tiny_config(corpus, copy, steps=12, **NO_EVAL))["start_step"] == 4
    resumed, by_hand = load_params(run)[2], load_params(copy)[2]
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(by_hand)))


def test_no_restorable_checkpoint_is_an_error_that_keeps_the_files(corpus, short_run, tmp_path):
    run = _copy(short_run, tmp_path / "run")
    _damage(run / "checkpoints" / "4")
    with pytest.raises(CheckpointError, match="no checkpoint in .* restores"):
        train(tiny_config(corpus, run, steps=8, **NO_EVAL))
    assert [p.name[:7] for p in (run / "corrupt").iterdir()] == ["step-4-"]


def test_bad_input_is_refused_before_touching_the_run_dir(corpus, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match="tokenizer has 120 tokens but the model embeds only 100"):
        train(tiny_config(corpus, run_dir, **{"model.vocab_size": 100}))
    with pytest.raises(ValueError, match="data.seq_len=64 exceeds the model's context of 32"):
        train(tiny_config(corpus, run_dir, **{"data.seq_len": 64}))
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        train(tiny_config(corpus, run_dir, **{"data.train": str(tmp_path / "missing.jsonl")}))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        train(tiny_config(corpus, run_dir, **{"data.train": str(empty)}))
    assert not run_dir.exists()


def test_config_names_files_and_overrides(tmp_path):
    config = apply_overrides(load_config("gpt2-mini-sotu"), ["steps=70", "model.n_layer=2", "seed=3"])
    assert (config.steps, config.model.n_layer, config.seed) == (70, 2, 3)
    assert config.model.n_positions == 128
    with pytest.raises(ValueError, match="unknown config field 'stepz'"):
        apply_overrides(config, ["stepz=1"])
    with pytest.raises(ValueError, match="unknown config 'nope'"):
        load_config("nope")
    with pytest.raises(ValueError, match="optimizer.warmup_steps=10 exceeds the run's steps=5"):
        TrainConfig(steps=5, optimizer=OptimizerConfig(warmup_steps=10))


def test_a_negative_learning_rate_is_refused(capsys):
    with pytest.raises(ValueError, match=r"^optimizer.learning_rate=-0.001 must be a positive number$"):
        apply_overrides(load_config("gpt2-mini-sotu"), ["optimizer.learning_rate=-1e-3"])
    with pytest.raises(SystemExit) as e:
        jaxlm("train", "--set", "optimizer.learning_rate=-1e-3", "--print-config")
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: optimizer.learning_rate=-0.001 must be a positive number\n"


def test_resuming_with_more_steps_says_so_in_one_line(corpus, short_run, tmp_path, capsys):
    """The schedule is then laid over the new length: one warning line, and run.json records the
    new steps (a resumable field)."""
    run = _copy(short_run, tmp_path / "run")
    config = config_file(tmp_path / "cfg.py", tiny_config(corpus, run, **{**SHORT, "steps": 6}))
    assert jaxlm("train", "--config", config)["start_step"] == 4
    assert capsys.readouterr().err.splitlines() == [
        f"WARNING: resuming {run} at step 4 with steps=6 (it was saved with steps=4); the cosine learning-rate "
        "schedule is now laid over 6 steps from step 4 on"]
    assert load_params(run)[3].config.steps == 6 and _latest_step(run) == 6


@pytest.mark.parametrize("text, message", [
    (None, r"config file .*nope.py does not exist: give an existing .py file that defines get_config\(\)"),
    ("STEPS = 5\n", r"config file .*cfg.py defines no get_config\(\): add one that returns a train.config.TrainConfig"),
    ("def get_config():\n    return {'steps': 5}\n", r"get_config\(\) in .*cfg.py returned a dict, not a TrainConfig"),
])
def test_config_files_that_give_no_config_are_named(tmp_path, capsys, text, message):
    """load_config and jaxlm train --config: one line and exit status 2, not a traceback."""
    path = tmp_path / ("nope.py" if text is None else "cfg.py")
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError, match=message) as e:
        load_config(str(path))
    assert "\n" not in str(e.value)
    with pytest.raises(SystemExit) as e:
        jaxlm("train", "--config", path, "--print-config")
    assert e.value.code == 2 and re.match(f"error: {message}", capsys.readouterr().err)


@pytest.mark.slow
def test_data_and_model_parallel_meshes_match_one_device(corpus, tmp_path):
    """Two (virtual) CPU devices, sharded by batch or by the model's wide axes, train like one."""
    import jax

    train(tiny_config(corpus, tmp_path / "one", steps=3, **NO_EVAL))
    script = (
        "import sys; sys.path.insert(0, 'tests'); from pathlib import Path\n"
        "import jax; assert jax.device_count() == 2\n"
        "from conftest import tiny_config; from train.loop import train\n"
        f"corpus = (Path({str(corpus[0])!r}), Path({str(corpus[1])!r}))\n"
        "for name, mesh in (('data', {'data': 2}), ('model', {'data': 1, 'model': 2})):\n"
        f"    train(tiny_config(corpus, Path({str(tmp_path)!r}) / name, steps=3, **{{'data.eval': None, 'mesh': mesh}}))\n"
    )
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    one = _final_params(tmp_path / "one")
    for name in ("data", "model"):
        for x, y in zip(jax.tree.leaves(one), jax.tree.leaves(_final_params(tmp_path / name))):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=2e-5, err_msg=name)


def test_two_processes_never_train_in_one_folder(tmp_path):
    import models
    from train.checkpoint import Checkpoints

    model_config = models.get_config("gpt2-tiny")
    config = run_config_for(model_config, tmp_path / "run")
    first = Checkpoints(config.run_dir, config, model_config, keep=1)
    with pytest.raises(CheckpointError, match="another process is training in"):
        Checkpoints(config.run_dir, config, model_config, keep=1)
    first.close()
    Checkpoints(config.run_dir, config, model_config, keep=1).close()


@pytest.mark.slow
def test_streaming_training_resumes_like_an_uninterrupted_run(corpus, tmp_path):

    full = tiny_config(corpus, tmp_path / "full", steps=6, **NO_EVAL, **{"data.streaming": True})
    train(full)
    train(tiny_config(corpus, tmp_path / "parts", steps=3, **NO_EVAL, **{"data.streaming": True}))
    summary = train(tiny_config(corpus, tmp_path / "parts", steps=6, **NO_EVAL, **{"data.streaming": True}))
    assert summary["start_step"] == 3
    _assert_bitwise_equal(_final_params(tmp_path / "parts"), _final_params(tmp_path / "full"))
