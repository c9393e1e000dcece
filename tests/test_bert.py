"""BERT / ALBERT modules: presets, heads, ALBERT's sharing, layer stacking, dtypes, bad input."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models import hf
from models.layers import unstack_layers

# Parameter counts of transformers' BertModel / AlbertModel (with the pooler, no heads), and of
# ...ForPreTraining (the MLM decoder is tied to the word embeddings, so it adds no weights).
REFERENCE_COUNTS = {
    "bert-base-uncased": (109_482_240, 110_106_428),
    "bert-base-cased": (108_310_272, 108_932_934),
    "bert-large-uncased": (335_141_888, 336_226_108),
    "albert-base-v2": (11_683_584, 11_813_810),
    "albert-large-v2": (17_683_968, 17_847_474),
    "albert-xlarge-v2": (58_724_864, 59_021_490),
    "albert-xxlarge-v2": (222_595_584, 223_158_450),
}

# Test shapes: small vocabularies and contexts, head counts that are not powers of two.
TINY_BERT = dict(vocab_size=64, n_positions=24, d_model=30, n_head=5,
                 d_ff=44, n_layer=2, scan_layers=True)
# Three depths over two groups of two layers: group 0 serves depths 0 and 1, group 1 depth 2.
TINY_ALBERT = dict(TINY_BERT, d_embed=12, n_layer=3, n_groups=2, layers_per_group=2)

# One batch for every test, so each config compiles once: token 7 is absent (see the MLM test),
# the second row is padded, the second half is segment B.
IDS = np.random.RandomState(0).randint(8, 64, (2, 12))
MASK = np.ones_like(IDS)
MASK[1, 8:] = 0
SEGMENTS = np.zeros_like(IDS)
SEGMENTS[:, 6:] = 1


def tiny(family, **overrides):
    if family == "bert":
        return models.create("bert-tiny", **{**TINY_BERT, **overrides})
    return models.create("albert-tiny", **{**TINY_ALBERT, **overrides})


@functools.lru_cache
def init(config):
    """Random parameters of the config's shapes, drawn in numpy: these tests need weights, not our
    initialisation (tested on its own), and compiling an init takes seconds."""
    rng = np.random.RandomState(0)

    def draw(path, shape):
        mean = 1.0 if path[-1].key == "scale" else 0.0
        return (mean + 0.1 * rng.randn(*shape.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, models.param_shapes(config.module()))


@functools.lru_cache
def _jitted_apply(config):
    return jax.jit(config.module().apply, static_argnames="deterministic")


def forward(config, params, ids=IDS, mask=MASK, segments=SEGMENTS, deterministic=True, **kw) -> dict:
    """The module's outputs (on the test batch by default) as numpy arrays; one compiled function per config."""
    out = _jitted_apply(config)(
        {"params": params}, ids, attention_mask=mask, token_type_ids=segments, deterministic=deterministic, **kw
    )
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_full_size_parameter_counts(name):
    model_count, pretraining_count = REFERENCE_COUNTS[name]
    assert models.count_params(models.create(name, head="pooler")[0]) == model_count
    assert models.count_params(models.create(name)[0]) == pretraining_count


def test_reference_counts_match_transformers():
    """The table above is transformers' own count, taken without allocating (meta device)."""
    import torch
    import transformers

    for name, counts in REFERENCE_COUNTS.items():
        _, c = models.create(name)
        fields = hf.to_hf_config(c)
        reference = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
        classes = ((transformers.BertModel, transformers.BertForPreTraining) if c.family == "bert"
                   else (transformers.AlbertModel, transformers.AlbertForPreTraining))
        for cls, count in zip(classes, counts):
            with torch.device("meta"):
                model = cls(reference)
            assert sum(p.numel() for p in model.parameters()) == count, (name, cls.__name__)


def test_presets_follow_the_references():
    _, c = models.create("bert-base-uncased")
    assert (c.activation, c.layer_norm_eps, c.embed_dropout, c.resid_dropout) == ("gelu", 1e-12, 0.1, 0.1)
    for name in ("albert-base-v2", "albert-large-v2", "albert-xlarge-v2", "albert-xxlarge-v2"):
        _, c = models.create(name)
        assert (c.activation, c.layer_norm_eps, c.d_embed) == ("gelu_tanh", 1e-12, 128)
        assert c.embed_dropout == c.attn_dropout == c.resid_dropout == 0.0
    _, c = models.create("albert-xxlarge-v2")
    assert (c.d_model, c.n_head, c.d_ff, c.n_layer) == (4096, 64, 16384, 12)
    _, c = models.create("bert-tiny")
    assert (c.n_layer, c.d_model, c.n_head, c.d_ff) == (2, 128, 2, 512)


@pytest.mark.parametrize("family", ["bert", "albert"])
def test_heads_decide_outputs_and_parameters(family):
    sentence = "nsp" if family == "bert" else "sop"
    expected = {
        "pretraining": {"hidden": (2, 9, 30), "pooled": (2, 30), "mlm_logits": (2, 9, 64), f"{sentence}_logits": (2, 2)},
        "mlm": {"hidden": (2, 9, 30), "mlm_logits": (2, 9, 64)},
        "pooler": {"hidden": (2, 9, 30), "pooled": (2, 30)},
        "none": {"hidden": (2, 9, 30)},
    }
    _, c = tiny(family)
    full = models.param_shapes(c.module())
    ids = jnp.zeros((2, 9), jnp.int32)
    for head, outputs in expected.items():
        config = dataclasses.replace(c, head=head)
        params = models.param_shapes(config.module())
        assert set(params) == set(full) - ({"pooler", "mlm", sentence} - set(config.heads))
        out = jax.eval_shape(lambda p: config.module().apply({"params": p}, ids), params)
        assert {k: v.shape for k, v in out.items()} == outputs
    with pytest.raises(ValueError, match="unknown head 'nsp'"):
        tiny(family, head="nsp")


def test_initialisation_follows_bert():
    """N(0, 0.02) weights and embeddings (no residual scaling), zero biases, unit LayerNorms;
    ALBERT's shared group initialised once, inside the scan over depth."""
    _, c = tiny("albert", d_model=60, d_ff=90, d_embed=40)
    params = models.init_params(c.module(), jax.random.key(0))
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        name, x = jax.tree_util.keystr(path), np.asarray(x)
        if name.endswith("['scale']"):
            np.testing.assert_array_equal(x, 1.0, err_msg=name)
        elif name.endswith("['bias']"):
            np.testing.assert_array_equal(x, 0.0, err_msg=name)
        else:
            assert np.std(x) == pytest.approx(0.02, rel=0.15), name
            assert abs(np.mean(x)) < 0.004, name
    # The two layers of a group, and the two groups, are drawn independently.
    fc = [params[f"group_{g}"]["blocks"]["mlp"]["fc"]["kernel"][k] for g in range(2) for k in range(2)]
    assert all(not np.allclose(a, b) for i, a in enumerate(fc) for b in fc[i + 1 :])


def test_mlm_decoder_is_the_word_embedding_matrix(rng):
    """Logits = transformed states . word embeddings + bias: no separate output matrix."""
    for family, width in (("bert", TINY_BERT["d_model"]), ("albert", TINY_ALBERT["d_embed"])):
        _, c = tiny(family)
        params = init(c)
        table = params["embeddings"]["word_embeddings"]["embedding"]
        assert table.shape == (c.vocab_size, width)
        assert params["mlm"]["transform"]["kernel"].shape == (c.d_model, width)
        shifted = jax.tree.map(lambda x: x, params)
        shifted["embeddings"]["word_embeddings"]["embedding"] = table + np.eye(c.vocab_size, 1, -7) * rng.randn(width)
        a, b = forward(c, params)["mlm_logits"], forward(c, shifted)["mlm_logits"]
        # Changing row 7 changes the logit of token 7 only.
        others = np.arange(c.vocab_size) != 7
        np.testing.assert_allclose(a[..., others], b[..., others], atol=1e-6)
        assert np.abs(a[..., 7] - b[..., 7]).min() > 1e-4


def _count(family, **overrides):
    return models.count_params(tiny(family, **overrides)[0])


def test_albert_shares_each_group_once():
    _, c = tiny("albert", n_groups=1, layers_per_group=1)
    params = models.param_shapes(c.module())
    assert [k for k in params if k.startswith("group")] == ["group_0"]
    # Scanned over depth, the group is broadcast, not stacked: its only leading axis is layers_per_group.
    assert params["group_0"]["blocks"]["attn"]["query"]["kernel"].shape == (1, c.d_model, 5, 6)
    # Depth costs nothing; each group and each layer inside a group costs one layer's parameters.
    base = _count("albert", n_groups=1, layers_per_group=1)
    layer = _count("albert", n_groups=1, layers_per_group=2) - base
    assert layer == 4 * (30 * 30 + 30) + 2 * (30 * 44) + 44 + 30 + 4 * 30
    for depth in (1, 3, 12):
        assert _count("albert", n_layer=depth, n_groups=1, layers_per_group=1) == base
    assert _count("albert", n_layer=12, n_groups=3, layers_per_group=1) == base + 2 * layer
    assert _count("albert", n_groups=2, layers_per_group=2) == base + 3 * layer
    unrolled = models.param_shapes(tiny("albert", scan_layers=False)[0])
    assert sorted(unrolled["group_1"]) == ["blocks_0", "blocks_1"]


def test_albert_group_assignment_follows_transformers():
    """Depth i applies group int(i / (L / G)); every group serves a contiguous run of depths."""
    for layers, groups, depths in ((12, 1, (12,)), (4, 2, (2, 2)), (5, 2, (3, 2)), (7, 3, (3, 2, 2)), (3, 3, (1, 1, 1))):
        _, c = tiny("albert", n_layer=layers, n_groups=groups)
        assert c.group_depths == depths
    with pytest.raises(ValueError, match="n_groups=4 must lie in 1..n_layer=3"):
        tiny("albert", n_layer=3, n_groups=4)


def _unrolled_params(c, params):
    """Scanned parameters in the layout of ``scan_layers=False``."""
    out = dict(params)
    if c.family == "bert":
        del out["blocks"]
        out.update({f"blocks_{i}": b for i, b in enumerate(unstack_layers(params, c.n_layer, True, "blocks"))})
        return out
    for g in range(c.n_groups):
        inner = unstack_layers(params[f"group_{g}"], c.layers_per_group, True, "blocks")
        out[f"group_{g}"] = {f"blocks_{k}": b for k, b in enumerate(inner)}
    return out


@pytest.mark.parametrize("family", ["bert", "albert"])
def test_scanned_and_unrolled_stacks_agree(family):
    """ALBERT unrolled calls one module instance per group at each depth it serves."""
    _, c = tiny(family)
    params = init(c)
    reference = forward(c, params)
    out = forward(dataclasses.replace(c, scan_layers=False), _unrolled_params(c, params))
    for key in reference:
        np.testing.assert_allclose(out[key], reference[key], atol=1e-5)
    if family == "albert":
        remat = forward(dataclasses.replace(c, remat="full"), params)
        np.testing.assert_allclose(remat["hidden"], reference["hidden"], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["bert", "albert"])
def test_bf16_compute_with_fp32_params_stays_close(family):
    _, c = tiny(family)
    params = init(c)
    bf16 = dataclasses.replace(c, dtype="bfloat16")
    out = forward(bf16, params)
    assert out["hidden"].dtype == jnp.bfloat16
    assert out["mlm_logits"].dtype == jnp.float32  # the logits are accumulated and returned in fp32
    ref = forward(c, params)
    np.testing.assert_allclose(out["mlm_logits"].astype(np.float32), ref["mlm_logits"], atol=0.05)
    if family == "albert":
        # The gradient path too; every parameter gets a gradient, the shared groups through the scan.
        def loss(p):
            out = bf16.module().apply({"params": p}, IDS, attention_mask=MASK)
            return out["mlm_logits"].astype(jnp.float32).std() + out["sop_logits"].astype(jnp.float32).sum()

        grads = jax.jit(jax.grad(loss))(params)
        assert all(np.isfinite(g).all() and np.abs(g).max() > 0 for g in map(np.asarray, jax.tree.leaves(grads)))


def test_dropout_only_when_training_and_none_in_albert_v2():
    train = lambda config, seed: forward(config, init(config), deterministic=False,
                                         rngs={"dropout": jax.random.key(seed)})["hidden"]
    _, c = tiny("bert")
    evaluated = forward(c, init(c))["hidden"]
    assert not np.allclose(train(c, 0), evaluated)
    assert not np.allclose(train(c, 0), train(c, 1))
    np.testing.assert_array_equal(train(c, 0), train(c, 0))
    _, c = tiny("albert")  # the v2 defaults: no dropout anywhere
    np.testing.assert_allclose(train(c, 0), forward(c, init(c))["hidden"], atol=1e-6)


@pytest.mark.parametrize("family", ["bert", "albert"])
def test_every_parameter_has_logical_axes_the_sharding_rules_accept(family):
    from train.sharding import RULES

    module, c = tiny(family)
    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))["params"]
    specs = nn.get_partition_spec(boxed)
    shapes = jax.tree.leaves(nn.unbox(boxed))
    specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    for spec, shape in zip(specs, shapes):
        assert len(spec) == len(shape.shape)
        nn.logical_to_mesh_axes(spec, RULES)  # raises on an axis named twice


def test_segment_ids_beyond_the_type_vocabulary():
    for family in ("bert", "albert"):
        module, c = tiny(family)
        params = init(c)
        segments = SEGMENTS.copy()
        segments[0, -1] = 2
        with pytest.raises(ValueError, match=r"segment ids \(token_type_ids\) out of range: got \[2\].*0\.\.1.*2 types"):
            module.apply({"params": params}, IDS, token_type_ids=segments)
        # Under jit the ids are not concrete: the lookup gives NaN, so the loss cannot look valid.
        out = forward(c, params, segments=segments)
        assert np.isnan(out["hidden"][0]).all() and np.isfinite(out["hidden"][1]).all()
        with pytest.raises(ValueError, match="token ids out of range"):
            module.apply({"params": params}, np.array([[1, c.vocab_size]]))


def test_sequence_longer_than_the_position_table_is_refused():
    module, c = tiny("bert")
    params = init(c)
    with pytest.raises(ValueError, match="sequence length 25 exceeds the context of 24 positions"):
        module.apply({"params": params}, np.zeros((1, 25), np.int32))


def test_unknown_presets_and_fields_are_refused():
    with pytest.raises(ValueError, match="valid presets: .*albert-base-v2.*bert-base-uncased"):
        models.create("bert-huge")
    with pytest.raises(ValueError, match="no field"):
        models.create("bert-base-uncased", pre_ln=True)
    with pytest.raises(ValueError, match="d_model=100 is not divisible by n_head=12"):
        models.create("bert-base-uncased", d_model=100)
    with pytest.raises(ValueError, match="unknown activation"):
        models.create("albert-base-v2", activation="gelu_new")
