"""Scale-out on this CPU: 8 simulated devices in one process, and 2 real processes of 2 devices
each joined by JAX's distributed runtime (gloo collectives), against one-device runs.

Across meshes and processes the sums are reduced in another order, so parameters agree within
fp32 reduction tolerance rather than bitwise. The subprocesses run tests/mesh_runs.py and share
the session's persistent compilation cache (conftest).
"""

import json
import os
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


def _env(devices, **more):
    """This process's environment (conftest's compilation cache and XLA flags) for a subprocess
    with ``devices`` CPU devices."""
    flags = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), f"--xla_force_host_platform_device_count={devices}"]))
    return dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", **more)


def _runs_file(path, runs):
    """``runs``: (name, config) or (name, config, moved) as tests/mesh_runs.py reads them."""
    path.write_text(json.dumps([[run[0], run[1].to_dict(), run[2] if len(run) > 2 else None] for run in runs]))
    return path


def _steps(run_dir):
    folder = Path(run_dir) / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


def _losses(run_dir):
    """Training loss by step; a resumed run's later lines replace the earlier ones."""
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"}


def _assert_close(run_dir, reference):
    got, want = load_params(run_dir)[2], load_params(reference)[2]  # restored onto this one CPU
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
        if jax.tree_util.keystr(path).endswith("['key']['bias']"):
            # No gradient in exact arithmetic (the softmax over keys ignores a shift common to all
            # keys): its updates are rounding noise, scaled up by Adam, and differ with the reduction order.
            continue
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **TOLERANCE, err_msg=f"{run_dir}: {path}")
    losses, expected = _losses(run_dir), _losses(reference)
    assert losses.keys() == expected.keys()
    np.testing.assert_allclose([losses[s] for s in sorted(losses)], [expected[s] for s in sorted(expected)],
                               **TOLERANCE, err_msg=str(run_dir))


@pytest.mark.slow
def test_eight_device_meshes_place_arrays_by_the_rules_and_train_like_one_device(corpus, tmp_path):
    """Arrays placed by the rules on data, fsdp, tensor and mixed meshes; training like one device
    on 8-way fsdp (mesh.data=1, mesh.fsdp=-1) and on 2 x 2 x 2, which has data and tensor
    parallelism too (each mesh compiles its own steps, ~10 s); a run saved on 8-way fsdp resumed
    on 2 x 2 x 2 in the same process (the mixed mesh's steps compiled once); its checkpoint
    evaluated and sampled on one CPU."""
    base = {"model.n_head": 8, "data.batch_size": 8, "steps": 4, "checkpoint.every": 2, "log.every": 1,
            "data.eval": None}
    meshes = {"fsdp": {"data": 1, "fsdp": -1}, "mixed": {"data": 2, "fsdp": 2, "model": 2}}
    runs = [(name, tiny_config(corpus, tmp_path / name, mesh=mesh, **base)) for name, mesh in meshes.items()]
    # Saved at step 2 on 8-way fsdp, resumed on 2 x 2 x 2 (the later checkpoint removed).
    moved = tmp_path / "moved"
    runs.append(("moved", tiny_config(corpus, moved, mesh=meshes["mixed"], **base), {"from": str(tmp_path / "fsdp"),
                                                                                     "step": 2}))
    log = tmp_path / "meshes.log"
    with open(log, "w") as stderr:  # a file, not a pipe: nothing waits for the parent to read it
        meshes_run = subprocess.Popen(
            [sys.executable, "tests/mesh_runs.py", "check", str(_runs_file(tmp_path / "runs.json", runs))], cwd=REPO,
            env=_env(8, JAXLM_CACHE=str(tmp_path / "cache")), stdout=subprocess.PIPE, stderr=stderr,
            text=True)
    reference = tmp_path / "one"
    train(tiny_config(corpus, reference, **base))  # on one device, while the subprocess runs
    out, _ = meshes_run.communicate(timeout=600)
    assert meshes_run.returncode == 0, log.read_text()[-4000:]
    summaries = {name: json.loads(line[len(name) + 1:]) for line in out.splitlines()
                 for name, *_ in runs if line.startswith(f"{name} {{")}
    assert summaries["fsdp"]["mesh"] == {"data": 1, "fsdp": 8, "model": 1}
    assert summaries["moved"]["start_step"] == 2 and summaries["moved"]["mesh"] == meshes["mixed"]
    for name in (*meshes, "moved"):
        _assert_close(tmp_path / name, reference)

    root, _ = corpus
    ours, theirs = (evaluate_checkpoint(run, str(root / "validation.jsonl"), overrides={"log.eval_max_batches": 2})
                    for run in (moved, reference))
    assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
    module, _, params, _ = load_params(moved)
    assert len(generate(module, params, [1, 2, 3], 5, rng=jax.random.PRNGKey(0))) == 5


def _launch(runs_file):
    """Two processes training ``runs_file``'s runs; each one's stderr goes to RUNS_FILE.I.log
    (a file, not a pipe: nothing waits for the parent to read it)."""
    port = free_port()
    procs = []
    for i in range(2):
        log = runs_file.with_suffix(f".{i}.log")
        with open(log, "w") as stderr:
            procs.append(subprocess.Popen(
                [sys.executable, "tests/mesh_runs.py", "process", str(runs_file), str(port), str(i)], cwd=REPO,
                env=_env(2), stdout=subprocess.PIPE, stderr=stderr, text=True))
        procs[-1].log = log
    return procs


def _errors(procs) -> list[str]:
    return [p.log.read_text()[-3000:] for p in procs]


def _kill_after_first_checkpoint(procs, run_dir, timeout=600):
    deadline = time.time() + timeout
    while not _steps(run_dir):
        assert all(p.poll() is None for p in procs), _errors(procs)
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    for p in procs:
        assert p.wait() == -signal.SIGKILL


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_after_a_kill(corpus, tmp_path):
    """bert-tiny (data 2 across the processes x model 2) trained by a pair of processes, then
    gpt2-tiny (fsdp 2 across the processes x model 2, so each process holds only its shards) by
    the same pair, killed with SIGKILL after its first checkpoint and resumed by a new pair; both
    end as on one device. (Killing bert-tiny too took a third pair of processes: the resume of a
    run whose parameters are split across processes is the harder case.) The one-device
    references train while the second pair runs."""
    steps = 16
    common = {"steps": steps, "data.batch_size": 8, "log.every": 1, "data.eval": None}
    fields = {"bert": {"model": "bert-tiny", "model.vocab_size": 120, "model.n_positions": 32, "task.name": "mlm_nsp",
                       **common, "mesh": {"data": 2, "model": 2}},
              "gpt": dict(common, mesh={"fsdp": 2, "model": 2})}

    def launch(every: dict):
        """A pair of processes training the runs named in ``every``, each saving every ``every[name]``
        steps (checkpoint.every may change on resuming)."""
        runs = [(name, tiny_config(corpus, tmp_path / name, **fields[name], **{"checkpoint.every": n}))
                for name, n in every.items()]
        return _launch(_runs_file(tmp_path / ("-".join(f"{k}{n}" for k, n in every.items()) + ".json"), runs))

    _kill_after_first_checkpoint(launch({"bert": steps, "gpt": 2}), tmp_path / "gpt")
    assert _steps(tmp_path / "bert") == [steps] and 0 < _steps(tmp_path / "gpt")[-1] < steps
    procs = launch({"gpt": steps})
    for name in ("bert", "gpt"):  # the references: one device, one checkpoint
        train(tiny_config(corpus, tmp_path / f"{name}-one", **{**fields[name], "mesh": {"data": 1},
                                                               "checkpoint.every": steps}))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), _errors(procs)
    summary = json.loads(outputs[0].split("gpt ", 1)[1].splitlines()[0])
    assert summary["processes"] == 2 and summary["start_step"] > 0
    assert "gpt {" not in outputs[1]  # only process 0 prints

    for name in ("bert", "gpt"):
        _assert_close(tmp_path / name, tmp_path / f"{name}-one")


def test_processes_told_different_counts_both_stop_at_once_naming_both(corpus, tmp_path):
    """Found by the handshake before JAX's runtime starts (which would wait 300 s, then abort);
    the jaxlm command as a user starts it."""
    config = config_file(tmp_path / "cfg.py", tiny_config(corpus, tmp_path / "run", **{"data.eval": None}))
    port = free_port()

    def start(count, index):
        cmd = [sys.executable, "-m", "jaxlm", "train", "--config", str(config), "--coordinator", f"localhost:{port}",
               "--num-processes", str(count), "--process-id", str(index)]
        return subprocess.Popen(cmd, cwd=REPO, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
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


def test_processes_told_the_same_count_start(tmp_path):
    procs = _launch(_runs_file(tmp_path / "none.json", []))  # start the runtime, train nothing
    for p in procs:
        p.communicate(timeout=60)
    assert [p.returncode for p in procs] == [0, 0], _errors(procs)
