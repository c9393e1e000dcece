"""bench/variants.py: rows for each variant, ratios to the baseline from the same run; variant runs
as rows of the inference benchmark (``--mode infer --variant-runs``)."""

import dataclasses

import jax
import numpy as np
import pytest

import models
from bench import inference
from bench.variants import Variant, VariantSpec, compare
from models.heads_pruning import prune_heads
from train.checkpoint import save_params


@pytest.mark.slow
def test_variant_rows():
    module, config = models.create("gpt2-tiny")
    params = models.init_params(module, jax.random.key(0))
    small_config, small = prune_heads(config, params, [[0, 1], [2]])
    rows = compare([Variant("base", module, params, {"loss": 2.0}),
                    Variant("pruned", small_config.module(), small, {"loss": 2.5})],
                   VariantSpec(batch_size=2, seq_len=16, prompt_len=4, new_tokens=4, steps=2, warmup=0))
    assert [r["variant"] for r in rows] == ["base", "pruned"]
    assert rows[0]["decode_ms_per_token_vs_baseline"] == 1.0 and rows[1]["loss_change"] == 0.5
    assert rows[1]["params"] < rows[0]["params"] and rows[1]["param_bytes_vs_baseline"] < 1
    assert rows[1]["forward_tokens_per_s"] > 0 and rows[1]["decode_tokens_per_s"] > 0


@pytest.mark.slow
def test_variant_runs_join_the_inference_table(corpus, tmp_path):
    """A gpt2-tiny run, a head-pruned copy and an adaptive-softmax run of the same vocabulary: rows
    timed with the fp32 baseline, with bytes and quality against it on the corpus's tokens."""
    run = {"data.tokenizer": str(corpus[1]), "task.name": "lm", "data.seq_len": 32}
    module, config = models.create("gpt2-tiny", n_positions=32)
    params = models.init_params(module, jax.random.key(0))
    base = save_params(tmp_path / "base", config, params, run)
    pruned = save_params(tmp_path / "heads", *prune_heads(config, params, [[0, 1], [2]]), run)
    adaptive_module, adaptive_config = models.create("gpt2-tiny", n_positions=32, adaptive_cutoffs=(64, 128))
    adaptive = save_params(tmp_path / "adaptive", adaptive_config,
                           models.init_params(adaptive_module, jax.random.key(1)), run)
    spec = inference.InferSpec(model=str(base), variants=("float32",), batch_sizes=(1, 2), prompt_len=4, new_tokens=4,
                               rounds=2, data=str(corpus[0] / "validation.jsonl"), quality_tokens=64, quality_seq=16,
                               encoder=False, references=(),
                               variant_runs=(("heads-3", str(pruned)), ("adaptive", str(adaptive))))
    result = inference.compare_inference(spec)
    rows = result["rows"]
    assert list(rows) == ["float32", "heads-3", "adaptive"]
    for name in ("heads-3", "adaptive"):
        row = rows[name]
        assert row["kind"] == "variant" and row["run"] == str(tmp_path / name.split("-")[0])
        assert row["decode_b1"]["ms_per_token"] > 0 and row["decode_b2"]["tokens_per_s"] > 0
        assert row["decode_b1"]["vs_fp32"] > 0 and len(result["rounds"]) == 2 and name in result["rounds"][0]["decode_b1"]
        quality = row["quality"]
        assert quality["tokens_from"] == spec.data and quality["positions"] == 4 * 15
        assert np.isfinite(quality["perplexity"]) and quality["kl_per_token"] > 0
        assert 0 <= quality["argmax_agreement"] <= 1 and 0 <= quality["greedy_agreement"] <= 1
        assert f"| {name} |" in result["markdown"]
    assert rows["heads-3"]["bytes_vs_fp32"] < 1 and rows["heads-3"]["params"] < models.count_params(params)
    assert rows["heads-3"]["nonzero_params"] <= rows["heads-3"]["params"]
    assert rows["adaptive"]["param_bytes"] != rows["float32"]["param_bytes"]

    small_module, small_config = models.create("gpt2-tiny", n_positions=32, vocab_size=128)
    other = save_params(tmp_path / "other", small_config, models.init_params(small_module, jax.random.key(2)), run)
    with pytest.raises(ValueError, match="has 128 tokens, the baseline .* 256: a variant is compared on the baseline"):
        inference.compare_inference(dataclasses.replace(spec, variant_runs=(("small", str(other)),)))
    with pytest.raises(ValueError, match="names \\['float32'\\] are taken"):
        inference.InferSpec(variant_runs=(("float32", str(pruned)),))
