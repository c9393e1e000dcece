"""scripts/benchmark.py: smoke tests on a tiny preset (no timing assertions)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import train_step, workers
from bench.spec import BenchSpec

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "gpt2-tiny", "--seq-len", "16", "--batch-size", "2", "--steps", "2", "--warmup", "1"]


def _check_contender(r):
    assert r["step_s"] > 0 and len(r["step_times_s"]) == 2
    assert r["tokens_per_s"] == pytest.approx(32 / r["step_s"])
    assert r["mfu"] > 0
    assert r["last_loss"] == r["last_loss"]  # not NaN
    assert r["peak_rss_delta_bytes"] is not None


def test_flops_per_token_of_gpt2_small():
    """6 * (85,056,000 non-embedding + 768 * 50257 tied output) + 12 * 12 * 768 * 256."""
    import models

    _, config = models.create("gpt2")
    flops = train_step.model_flops(config, 256)
    assert flops["non_embedding_params"] == 85_056_000
    assert flops["N"] == 85_056_000 + 768 * 50257
    assert flops["attention_flops_per_token"] == 12 * 12 * 768 * 256
    assert flops["flops_per_token"] == 770_231_808


@pytest.mark.slow
def test_command_line_compares_with_the_torch_reference(tmp_path):
    """The command line as a user runs it: one JSON object on stdout (and in --output)."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), *TINY, "--peak-tflops", "1", "--output", str(out),
         "--compare-reference", "--references", "torch"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result == json.loads(out.read_text())
    assert result["mode"] == "compare-reference"
    assert result["peak_source"] == "--peak-tflops" and result["peak_flops_per_s"] == 1e12
    assert result["dropout_rates"] == {"embd_dropout": 0.0, "attn_dropout": 0.0, "resid_dropout": 0.0}
    assert result["reference_config"]["n_embd"] == 32 and result["reference_config"]["attn_pdrop"] == 0.0
    _check_contender(result["ours"])
    assert result["ours"]["compile_s"] > 0 and result["ours"]["scan_layers"] is False
    _check_contender(result["torch_reference"])
    assert set(result["ratios"]) == {"torch_reference_over_ours_step_time"}


@pytest.mark.slow
def test_overrides_dropout_and_measured_peak():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import benchmark as cli
    finally:
        sys.path.pop(0)
    result = cli.main([*TINY, "--dropout", "on", "--set", "scan_layers=true"])
    assert result["peak_source"].startswith("measured")
    assert result["dropout_rates"]["attn_dropout"] == 0.1
    assert result["ours"]["scan_layers"] is True
    _check_contender(result["ours"])


def test_rejects_what_it_cannot_time_fairly():
    _, config = train_step.our_config(BenchSpec(model="openai-gpt-tiny", seq_len=16))
    with pytest.raises(ValueError, match="GPT-2 presets"):
        train_step.hf_gpt2_config(config, "off")
    with pytest.raises(ValueError, match="GPT family"):
        train_step.our_config(BenchSpec(model="bert-tiny", seq_len=16))
    with pytest.raises(ValueError, match="float32"):
        train_step.compare_reference(BenchSpec(model="gpt2-tiny", seq_len=16, dtype="bfloat16"))


@pytest.mark.skipif(
    not (workers.DEFAULT_REFERENCE_VENV / "bench-requirements.txt").exists(),
    reason="no Flax reference environment (scripts/benchmark.py --compare-reference creates it)",
)
def test_compare_with_the_flax_reference():
    spec = BenchSpec(model="gpt2-tiny", seq_len=16, batch_size=2, steps=2, warmup=1)
    result = train_step.compare_reference(spec, peak_tflops=1.0, references=("flax",))
    ref = result["flax_reference"]
    _check_contender(ref)
    assert ref["versions"]["transformers"] == workers.REFERENCE_TRANSFORMERS


@pytest.mark.slow
def test_sharing_benchmark_script_reports_every_variant():
    script = ROOT / "scripts" / "benchmark.py"
    done = subprocess.run(
        [sys.executable, str(script), "--mode", "sharing", "--layers", "2", "--hidden-size", "32", "--heads", "2",
         "--intermediate-size", "64", "--embedding-size", "8", "--vocab-size", "200", "--seq-len", "16",
         "--batch-size", "2", "--steps", "1", "--warmup", "0"],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {r["variant"]: r for r in json.loads(done.stdout)["rows"]}
    assert set(rows) == {"bert", "albert-unshared", "albert-shared", "albert-unshared-factorised",
                         "albert-shared-factorised"}
    assert rows["albert-shared-factorised"]["params"] < rows["albert-unshared-factorised"]["params"]
    assert rows["albert-shared"]["params"] < rows["albert-unshared"]["params"]
    assert rows["albert-shared"]["layer_groups"] == 1 and rows["albert-unshared"]["layer_groups"] == 2
