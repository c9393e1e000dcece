"""GPT / GPT-2 modules: presets, initialisation, layer stacking, dtypes, bad input."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models.layers import SelfAttention

# Parameter counts of transformers' GPT2Model / OpenAIGPTModel (no LM head: it is tied).
REFERENCE_COUNTS = {
    "openai-gpt": 116_534_784,
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_full_size_parameter_counts(name):
    module, _ = models.create(name)
    assert models.count_params(module) == REFERENCE_COUNTS[name]


def test_reference_counts_match_transformers():
    """The table above is transformers' own count, taken without allocating (meta device)."""
    import torch
    import transformers

    for name, count in REFERENCE_COUNTS.items():
        _, c = models.create(name)
        if c.pre_ln:
            hf = transformers.GPT2Config(n_embd=c.d_model, n_layer=c.n_layer, n_head=c.n_head)
            cls = transformers.GPT2Model
        else:
            hf = transformers.OpenAIGPTConfig()
            cls = transformers.OpenAIGPTModel
        with torch.device("meta"):
            model = cls(hf)
        assert sum(p.numel() for p in model.parameters()) == count, name


def _std(tree_leaf):
    return float(np.std(np.asarray(tree_leaf)))


def test_gpt2_scales_residual_projections_and_gpt_does_not():
    n_layer = 8
    for name, scaled in (("gpt2-tiny", True), ("openai-gpt-tiny", False)):
        module, c = models.create(name, n_layer=n_layer, d_model=128, n_head=4, d_ff=512, scan_layers=True)
        p = models.init_params(module, jax.random.key(0))["blocks"]
        expected = 0.02 / np.sqrt(2 * n_layer) if scaled else 0.02
        for out in (p["attn"]["out"]["kernel"], p["mlp"]["proj"]["kernel"]):
            assert _std(out) == pytest.approx(expected, rel=0.05), name
        for inner in (p["attn"]["query"]["kernel"], p["mlp"]["fc"]["kernel"]):
            assert _std(inner) == pytest.approx(0.02, rel=0.05), name


@functools.lru_cache
def _jitted_apply(config):
    return jax.jit(config.module().apply, static_argnames="deterministic")


def _forward(config, params, ids, deterministic=True, **kw):
    return np.asarray(_jitted_apply(config)({"params": params}, ids, deterministic=deterministic, **kw))


@pytest.mark.parametrize("name", ["gpt2-tiny", "openai-gpt-tiny"])
def test_scanned_and_unrolled_stacks_agree(name, rng):
    module, c = models.create(name, scan_layers=True)
    params = models.init_params(module, jax.random.key(1))
    unrolled = dataclasses.replace(c, scan_layers=False)
    blocks = [jax.tree.map(lambda x: x[i], params["blocks"]) for i in range(c.n_layer)]
    params_unrolled = {k: v for k, v in params.items() if k != "blocks"}
    params_unrolled.update({f"blocks_{i}": b for i, b in enumerate(blocks)})
    ids = rng.randint(0, c.vocab_size, (2, 16))
    np.testing.assert_allclose(_forward(c, params, ids), _forward(unrolled, params_unrolled, ids), atol=1e-5)
    remat = dataclasses.replace(c, remat="full")
    np.testing.assert_allclose(_forward(c, params, ids), _forward(remat, params, ids), atol=1e-6)


def test_bf16_compute_with_fp32_params_stays_close(rng):
    module, c = models.create("gpt2-tiny")
    params = models.init_params(module, jax.random.key(2))
    bf16 = dataclasses.replace(c, dtype="bfloat16")
    ids = rng.randint(0, c.vocab_size, (2, 32))
    out = jax.jit(bf16.module().apply)({"params": params}, ids)
    assert out.dtype == jnp.float32  # the logits are accumulated and returned in fp32
    assert jax.tree.leaves(params)[0].dtype == jnp.float32
    ref = _forward(c, params, ids)
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=0.05)
    # Also the gradient path in bf16 (LayerNorm and softmax statistics stay in fp32).
    grads = jax.jit(jax.grad(lambda p: bf16.module().apply({"params": p}, ids).astype(jnp.float32).mean()))(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_dropout_only_when_training(rng):
    module, c = models.create("gpt2-tiny")
    params = models.init_params(module, jax.random.key(3))
    ids = rng.randint(0, c.vocab_size, (2, 16))
    eval_a = _forward(c, params, ids)
    eval_b = _forward(c, params, ids, deterministic=True)
    np.testing.assert_array_equal(eval_a, eval_b)
    train = lambda seed: _forward(c, params, ids, deterministic=False, rngs={"dropout": jax.random.key(seed)})
    assert not np.allclose(train(0), eval_a)
    assert not np.allclose(train(0), train(1))
    np.testing.assert_array_equal(train(0), train(0))
    no_dropout = dataclasses.replace(c, embed_dropout=0.0, attn_dropout=0.0, resid_dropout=0.0)
    np.testing.assert_allclose(
        _forward(no_dropout, params, ids, deterministic=False, rngs={"dropout": jax.random.key(0)}), eval_a, atol=1e-6
    )


def test_explicit_attention_path_matches_fused(rng):
    """The path taken under attention dropout computes the same function as the fused one."""
    attn = SelfAttention(n_head=3, head_dim=8, d_model=24, causal=True, dropout_rate=0.0,
                         init_std=0.02, out_init_std=0.02)
    q, k, v = (jnp.asarray(rng.randn(2, 7, 3, 8), jnp.float32) for _ in range(3))
    mask = jnp.asarray(rng.rand(2, 1, 1, 7) > 0.3).at[:, :, :, 0].set(True)
    fused = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True)
    explicit = attn.explicit_attention(q, k, v, mask, jax.random.key(0))
    np.testing.assert_allclose(np.asarray(explicit), np.asarray(fused), atol=1e-6)


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match="valid presets: .*gpt2-medium"):
        models.create("gpt3")
    with pytest.raises(ValueError, match="no field"):
        models.create("gpt2", n_embd=3)


def test_sequence_longer_than_context_is_refused():
    module, c = models.create("gpt2-tiny")
    params = models.init_params(module, jax.random.key(0))
    with pytest.raises(ValueError, match="exceeds the context of 64"):
        module.apply({"params": params}, np.zeros((1, 65), np.int32))


def test_out_of_vocabulary_ids_are_never_silently_clamped():
    module, c = models.create("gpt2-tiny")
    params = models.init_params(module, jax.random.key(0))
    ids = np.array([[1, 2, c.vocab_size], [1, 2, 3]])
    with pytest.raises(ValueError, match="token ids out of range"):
        module.apply({"params": params}, ids)
    with pytest.raises(ValueError, match="out of range"):
        module.apply({"params": params}, np.array([[-1, 2]]))
    # Under jit the ids are not concrete: the lookup gives NaN, so the loss cannot look valid.
    logits = jax.jit(lambda p, x: module.apply({"params": p}, x))(params, ids)
    assert np.isnan(np.asarray(logits)[0]).all()
    assert np.isfinite(np.asarray(logits)[1]).all()
