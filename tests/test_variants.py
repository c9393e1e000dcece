"""bench/variants.py: rows for each variant, ratios to the baseline from the same run."""

import jax
import pytest

import models
from bench.variants import InferSpec, Variant, compare
from models.heads_pruning import prune_heads


@pytest.mark.slow
def test_variant_rows():
    module, config = models.create("gpt2-tiny")
    params = models.init_params(module, jax.random.key(0))
    small_config, small = prune_heads(config, params, [[0, 1], [2]])
    rows = compare([Variant("base", module, params, {"loss": 2.0}),
                    Variant("pruned", small_config.module(), small, {"loss": 2.5})],
                   InferSpec(batch_size=2, seq_len=16, prompt_len=4, new_tokens=4, steps=2, warmup=0))
    assert [r["variant"] for r in rows] == ["base", "pruned"]
    assert rows[0]["decode_ms_per_token_vs_baseline"] == 1.0 and rows[1]["loss_change"] == 0.5
    assert rows[1]["params"] < rows[0]["params"] and rows[1]["param_bytes_vs_baseline"] < 1
    assert rows[0]["decode"] in ("recompute", "kv-cache") and rows[1]["forward_tokens_per_s"] > 0
