"""Classifier heads on every family: pooling over the real positions only, either padding side,
the ULMFiT head, and each family's parameter depths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models.classifier import pool

BODIES = {
    "gpt2": ("gpt2-tiny", {}),
    "bert-stacked": ("bert-tiny", {"scan_layers": True}),
    "albert": ("albert-tiny", {}),
}


def _classifier(kind, **head):
    name, overrides = BODIES[kind]
    _, body = models.create(name, **overrides)
    config = models.ClassifierConfig(body, ("a", "b", "c"), **head)
    return config, config.module(), models.init_variables(config.module(), jax.random.key(0))


def test_pooling_reads_the_real_positions_only():
    hidden = jnp.asarray(np.random.RandomState(0).randn(2, 5, 3), jnp.float32)
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    h = np.asarray(hidden)
    np.testing.assert_array_equal(pool(hidden, mask, "last", "last")[0], h[0, 2])
    np.testing.assert_array_equal(pool(hidden, mask, "first", "last")[1], h[1, 0])
    np.testing.assert_allclose(pool(hidden, mask, "mean", "last")[0], h[0, :3].mean(0), rtol=1e-6)
    concat = np.asarray(pool(hidden, mask, "concat", "last"))
    assert concat.shape == (2, 9)
    np.testing.assert_allclose(concat[0], np.concatenate([h[0, 2], h[0, :3].max(0), h[0, :3].mean(0)]), rtol=1e-6)
    np.testing.assert_array_equal(pool(hidden, mask, "concat", "first")[1, :3], h[1, 0])


@pytest.mark.parametrize("kind", list(BODIES))
@pytest.mark.parametrize("pooling,head", [("concat", "ulmfit"), ("last", "linear")])
def test_padding_changes_nothing_on_either_side(kind, pooling, head):
    config, module, variables = _classifier(kind, pooling=pooling, head=head)
    rng = np.random.RandomState(1)
    lengths = [7, 4, 1]
    rows = [rng.randint(5, 100, n) for n in lengths]
    right = np.zeros((3, 7), np.int32)
    left = np.zeros((3, 7), np.int32)
    for i, row in enumerate(rows):
        right[i, : len(row)] = row
        left[i, 7 - len(row):] = row
    right_mask, left_mask = (right > 0).astype(np.int32), (left > 0).astype(np.int32)
    apply = jax.jit(module.apply)
    from_right, from_left = apply(variables, right, right_mask), apply(variables, left, left_mask)
    assert from_right.shape == (3, 3)
    np.testing.assert_array_equal(from_right, from_left)
    # Other ids at the padded positions: nothing reads them.
    noisy = np.where(right_mask, right, rng.randint(5, 100, right.shape)).astype(np.int32)
    np.testing.assert_array_equal(apply(variables, noisy, right_mask), from_right)


def test_pooler_pooling_uses_the_encoders_pooler_and_only_theirs():
    config, module, variables = _classifier("bert-stacked", pooling="pooler")
    assert config.body.head == "pooler" and "pooler" in variables["params"]["body"]
    assert _classifier("albert", pooling="first")[0].body.head == "none"
    _, body = models.create("gpt2-tiny")
    with pytest.raises(ValueError, match="pooling='pooler' is the encoders' \\[CLS\\] pooler; a GPTConfig has none"):
        models.ClassifierConfig(body, ("a", "b"), pooling="pooler")
    with pytest.raises(ValueError, match="at least two distinct labels"):
        models.ClassifierConfig(body, ("a",))


def test_ulmfit_head_updates_its_batch_statistics_in_training_only():
    _, module, variables = _classifier("gpt2", head="ulmfit")
    ids = np.random.RandomState(2).randint(5, 100, (4, 6))
    train = jax.jit(lambda v, x: module.apply(v, x, deterministic=False, rngs={"dropout": jax.random.key(0)},
                                              mutable=["batch_stats"]))
    _, state = train(variables, ids)
    before, after = variables["batch_stats"]["head"]["norm_0"], state["batch_stats"]["head"]["norm_0"]
    assert not np.allclose(before["mean"], after["mean"])
    assert sorted(variables["params"]["head"]) == ["dense_0", "dense_1", "norm_0", "norm_1"]
    assert variables["params"]["head"]["dense_0"]["kernel"].shape == (3 * 32, 50)


def test_each_family_gives_every_parameter_a_depth():
    def values(tree):
        return {k: sorted({int(x) for leaf in jax.tree.leaves(v) for x in np.ravel(leaf)}) for k, v in tree.items()}

    _, gpt = models.create("gpt2-tiny")
    assert values(gpt.param_depths(models.param_shapes(gpt.module()))) == {
        "wte": [0], "wpe": [0], "blocks_0": [1], "blocks_1": [2], "ln_f": [2]}
    stacked = models.get_config(gpt, scan_layers=True)
    depths = stacked.param_depths(models.param_shapes(stacked.module()))
    assert all(np.array_equal(d, [1, 2]) for d in jax.tree.leaves(depths["blocks"]))
    _, bert = models.create("bert-tiny")
    assert values(bert.param_depths(models.param_shapes(bert.module()))) == {
        "embeddings": [0], "blocks_0": [1], "blocks_1": [2], "pooler": [3], "mlm": [3], "nsp": [3]}
    _, albert = models.create("albert-tiny", scan_layers=True)  # four depths, one shared group
    assert values(albert.param_depths(models.param_shapes(albert.module()))) == {
        "embeddings": [0], "embedding_hidden_mapping_in": [0], "group_0": [1], "pooler": [2], "mlm": [2], "sop": [2]}
    config, _, variables = _classifier("albert")
    assert values(models.param_depths(config, variables["params"])) == {"body": [0, 1], "head": [2]}
