"""Scale-out on this CPU: 8 simulated devices in one process, and 2 real processes of 2 devices
each joined by JAX's distributed runtime (gloo collectives), against one-device runs.

Across meshes and processes the sums are reduced in another order, so parameters agree within
fp32 reduction tolerance rather than bitwise. The subprocesses run tests/mesh_runs.py and share
a persistent compilation cache.
"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import config_file, free_port, tiny_config

from models.generation import generate
from train.checkpoint import load_params
from train.evaluation import evaluate_checkpoint
from train.loop import train
from train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xla-cache")


def _env(devices, cache):
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
                JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _runs_file(path, runs):
    path.write_text(json.dumps([[name, dataclasses.asdict(config)] for name, config in runs]))
    return path


def _steps(workdir):
    folder = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


def _losses(workdir):
    """Training loss by step; a resumed run's later lines replace the earlier ones."""
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if r["split"] == "train"}


def _assert_close(workdir, reference):
    got, want = load_params(workdir)[2], load_params(reference)[2]  # restored onto this one CPU
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
        if jax.tree_util.keystr(path).endswith("['key']['bias']"):
            # No gradient in exact arithmetic (the softmax over keys ignores a shift common to all
            # keys): its updates are rounding noise, scaled up by Adam, and differ with the reduction order.
            continue
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **TOLERANCE, err_msg=f"{workdir}: {path}")
    losses, expected = _losses(workdir), _losses(reference)
    assert losses.keys() == expected.keys()
    np.testing.assert_allclose([losses[s] for s in sorted(losses)], [expected[s] for s in sorted(expected)],
                               **TOLERANCE, err_msg=str(workdir))


@pytest.mark.slow
def test_eight_device_meshes_place_arrays_by_the_rules_and_train_like_one_device(corpus, tmp_path, xla_cache):
    """Data, fsdp, tensor and mixed meshes; a run saved on 8-way data parallelism resumed on
    2 x 2 x 2; its checkpoint evaluated and sampled on one CPU."""
    base = dict(model_overrides={"n_positions": 32, "n_head": 8}, batch_size=8, steps=6, checkpoint_every=3,
                log_every=1, eval_data=None)
    reference = tmp_path / "one"
    train(tiny_config(corpus, reference, **base))
    meshes = {"data": {"data": 8}, "fsdp": {"fsdp": 8}, "model": {"model": 8},
              "mixed": {"data": 2, "fsdp": 2, "model": 2}}
    runs = [(name, tiny_config(corpus, tmp_path / name, mesh=mesh, **base)) for name, mesh in meshes.items()]
    runs_file = _runs_file(tmp_path / "runs.json", runs)
    done = subprocess.run([sys.executable, "tests/mesh_runs.py", "check", str(runs_file)], cwd=REPO,
                          env=_env(8, xla_cache), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    for name in meshes:
        _assert_close(tmp_path / name, reference)

    # Saved at step 3 on 8-way data parallelism, resumed on 2 x 2 x 2 (the step-6 checkpoint removed).
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "data", moved)
    shutil.rmtree(moved / "checkpoints" / "6")
    runs_file = _runs_file(tmp_path / "moved.json", [("moved", tiny_config(corpus, moved, mesh=meshes["mixed"], **base))])
    done = subprocess.run([sys.executable, "tests/mesh_runs.py", "train", str(runs_file)], cwd=REPO,
                          env=_env(8, xla_cache), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout.split("moved ", 1)[1].splitlines()[0])
    assert summary["start_step"] == 3 and summary["mesh"] == meshes["mixed"]
    _assert_close(moved, reference)

    root, _ = corpus
    ours, theirs = (evaluate_checkpoint(run, str(root / "validation.jsonl"), max_batches=2) for run in (moved, reference))
    assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
    module, _, params, _ = load_params(moved)
    assert len(generate(module, params, [1, 2, 3], 5, rng=jax.random.PRNGKey(0))) == 5


def _launch(runs_file, cache):
    port = free_port()
    return [subprocess.Popen([sys.executable, "tests/mesh_runs.py", "process", str(runs_file), str(port), str(i)],
                             cwd=REPO, env=_env(2, cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]


def _kill_after_first_checkpoint(procs, workdir, timeout=600):
    deadline = time.time() + timeout
    while not _steps(workdir):
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-3000:] for p in procs]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    for p in procs:
        assert p.wait() == -signal.SIGKILL


@pytest.mark.slow
def test_two_processes_train_are_killed_and_resume_like_one(corpus, tmp_path, xla_cache):
    """gpt2-tiny (fsdp 2 across the processes x model 2) and bert-tiny (data 2 x model 2), each
    killed with SIGKILL after a checkpoint and resumed by a new pair of processes."""
    steps = 16
    common = dict(steps=steps, batch_size=8, checkpoint_every=2, log_every=1, eval_data=None)
    gpt = dict(common, mesh={"fsdp": 2, "model": 2})
    bert = dict(common, mesh={"data": 2, "model": 2}, model="bert-tiny", task="mlm_nsp",
                model_overrides={"vocab_size": 120, "n_positions": 32})
    for name, fields in (("gpt", gpt), ("bert", bert)):
        train(tiny_config(corpus, tmp_path / f"{name}-one", **{**fields, "mesh": {"data": 1}}))
    runs = [(name, tiny_config(corpus, tmp_path / name, **fields)) for name, fields in (("gpt", gpt), ("bert", bert))]
    both = _runs_file(tmp_path / "both.json", runs)

    _kill_after_first_checkpoint(_launch(both, xla_cache), tmp_path / "gpt")  # killed while training gpt2-tiny
    assert 0 < _steps(tmp_path / "gpt")[-1] < steps
    _kill_after_first_checkpoint(_launch(both, xla_cache), tmp_path / "bert")  # gpt2-tiny resumed, bert-tiny killed
    assert _steps(tmp_path / "gpt")[-1] == steps and 0 < _steps(tmp_path / "bert")[-1] < steps
    procs = _launch(_runs_file(tmp_path / "bert.json", runs[1:]), xla_cache)
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-3000:] for _, err in outputs]
    summary = json.loads(outputs[0][0].split("bert ", 1)[1].splitlines()[0])
    assert summary["processes"] == 2 and summary["start_step"] > 0
    assert "bert {" not in outputs[1][0]  # only process 0 prints

    for name in ("gpt", "bert"):
        _assert_close(tmp_path / name, tmp_path / f"{name}-one")


def test_processes_told_different_counts_both_stop_at_once_naming_both(corpus, tmp_path, xla_cache):
    """Found by the handshake before JAX's runtime starts (which would wait 300 s, then abort)."""
    config = config_file(tmp_path / "cfg.py", tiny_config(corpus, tmp_path / "run", eval_data=None))
    port = free_port()

    def start(count, index):
        cmd = [sys.executable, "scripts/train.py", "--config", str(config), "--coordinator", f"localhost:{port}",
               "--num-processes", str(count), "--process-id", str(index)]
        return subprocess.Popen(cmd, cwd=REPO, env=_env(2, xla_cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    procs = [start(2, 0), start(3, 1)]
    try:
        errors = [p.communicate(timeout=60)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    message = ("error: process 1 was told 3 processes, process 0 was told 2: give every process the same "
               "--num-processes (WORLD_SIZE)")
    for p, err in zip(procs, errors):
        assert p.returncode == 2 and err.splitlines()[0] == message, err[-3000:]
    assert not (tmp_path / "run").exists()


def test_processes_told_the_same_count_start(tmp_path, xla_cache):
    procs = _launch(_runs_file(tmp_path / "none.json", []), xla_cache)  # start the runtime, train nothing
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outputs]
