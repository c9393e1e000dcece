"""Scale-out pieces that need no extra devices: the memory plan against XLA's analysis, the
multi-process settings, and the example pod config."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import free_port, jaxlm

import models
from bench.memory import MemorySpec, largest_batch, plan
from train import distributed
from train.config import load_config

REPO = Path(__file__).resolve().parents[1]


def test_plan_counts_state_exactly_and_splits_it_over_fsdp():
    n = models.count_params(models.create("gpt2-tiny")[0])
    one = plan(MemorySpec(model="gpt2-tiny", seq_len=64, batch_size=8, device="custom", device_memory_gib=1))
    assert one["param_count"] == n
    assert one["bytes_per_device"]["params"] == 4 * n and one["bytes_per_device"]["optimizer"] >= 8 * n
    split = plan(MemorySpec(model="gpt2-tiny", seq_len=64, batch_size=8, mesh={"fsdp": 8}, device="custom",
                            device_memory_gib=1))
    assert split["bytes_per_device"]["params"] < one["bytes_per_device"]["params"] / 4  # all but ln/bias-sized leaves
    assert split["bytes_per_device"]["activations"] == pytest.approx(one["bytes_per_device"]["activations"] / 8)
    with pytest.raises(ValueError, match="give every axis's size"):
        MemorySpec(mesh={"data": -1})


def test_largest_batch_is_the_last_that_fits():
    spec = MemorySpec(model="gpt2-tiny", seq_len=64, device="custom", device_memory_gib=0.01)
    best = largest_batch(spec)
    assert best["fits"] and not plan(MemorySpec(**{**best["spec"], "batch_size": best["spec"]["batch_size"] + 1}))["fits"]


def test_memory_mode_compiles_the_step_and_the_plan_is_near_xla(tmp_path):
    """On this CPU, within 35% of XLA's own count for a small GPT-2 (the plan counts views as copies).
    A process of its own: --compile sets the CPU device count before JAX starts."""
    cmd = [sys.executable, "-m", "jaxlm", "benchmark", "--mode", "memory", "--model", "gpt2-tiny", "--set",
           "data.seq_len=64", "--set", "data.batch_size=8", "--set", "model.vocab_size=1024", "--device", "custom",
           "--device-memory-gib", "1", "--compile"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["fits"] and result["compiled"]["backend"] == "cpu"
    assert result["bytes_per_device"]["total"] == pytest.approx(result["compiled"]["xla_memory"]["total_live_bytes"],
                                                                rel=0.35)


def test_the_readme_memory_command_plans_gpt2_xl_on_16_devices(capsys):
    """Batch 16 splits over fsdp=16 (the old command's batch of 8 did not: refused in one line)."""
    command = ["benchmark", "--mode", "memory", "--model", "gpt2-xl", "--set", "mesh.data=1", "--set", "mesh.fsdp=16"]
    result = jaxlm(*command, "--set", "data.batch_size=16")
    assert result["spec"]["mesh"] == {"data": 1, "fsdp": 16, "model": 1} and result["per_device_microbatch"][0] == 1
    assert result["param_count"] == 1_557_611_200  # GPT-2 XL's 1.5B
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        jaxlm(*command, "--set", "data.batch_size=8")
    assert e.value.code == 2 and capsys.readouterr().err == (
        "error: data.batch_size=8 (/ data.grad_accum=1) does not split over the 16 data-parallel devices (mesh data=1 "
        "x fsdp=16); make data.batch_size / data.grad_accum a multiple of 16\n")


def test_settings_come_from_flags_or_the_launcher_environment():
    assert distributed.settings_from_env({}) is None
    assert distributed.settings_from_env({"WORLD_SIZE": "1"}) is None
    assert distributed.settings_from_env({"WORLD_SIZE": "4", "RANK": "2", "MASTER_ADDR": "h0", "MASTER_PORT": "9"}) == {
        "coordinator_address": "h0:9", "num_processes": 4, "process_id": 2}
    assert distributed.settings_from_env({"SLURM_NTASKS": "8"}) == {}  # JAX reads the job itself
    with pytest.raises(ValueError, match="MASTER_ADDR, MASTER_PORT is not"):
        distributed.settings_from_env({"WORLD_SIZE": "2", "RANK": "0"})
    assert distributed.initialize(env={}) is False  # one process: nothing started
    with pytest.raises(ValueError, match="--num-processes --process-id missing"):
        distributed.initialize("localhost:1234", env={})
    with pytest.raises(ValueError, match="process id 2 is not in 0..1"):
        distributed.initialize("localhost:1234", 2, 2, env={})
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        distributed.initialize("localhost", 2, 0, env={})


def test_the_handshake_refuses_a_repeated_id_on_every_process_and_times_out_alone():
    port = free_port()
    results = {}

    def join(name, count, index):
        try:
            distributed.handshake(f"localhost:{port}", count, index, timeout_s=30)
        except ValueError as e:
            results[name] = str(e)

    threads = [threading.Thread(target=join, args=(name, 3, index)) for name, index in (("0", 0), ("a", 1), ("b", 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == dict.fromkeys(["0", "a", "b"], "two processes were told process id 1: give each process its "
                                    "own --process-id (RANK) in 0..2")
    with pytest.raises(TimeoutError, match=f"nothing answered at the coordinator localhost:{port} within 0.3 s"):
        distributed.handshake(f"localhost:{port}", 2, 1, timeout_s=0.3)
    with pytest.raises(TimeoutError, match="only 0 of the other 1 processes reached the coordinator"):
        distributed.handshake(f"localhost:{port}", 2, 0, timeout_s=0.3)


def test_the_pod_example_config_fits_a_v4_32_as_the_readme_says():
    path = REPO / "scripts" / "configs" / "gpt2_medium_v4_32.py"
    config = load_config(str(path))
    assert config.model.dtype == "bfloat16" and config.data.streaming
    result = jaxlm("benchmark", "--mode", "memory", "--config", path, "--device", "tpu-v4")
    assert result["spec"]["mesh"] == {"data": 4, "fsdp": 4, "model": 1} and result["spec"]["dtype"] == "bfloat16"
    assert result["fits"] and result["per_device_microbatch"] == [4, 1024]
    assert result["gib_per_device"]["total"] == pytest.approx(24.5, abs=0.1)
