"""optim: learning-rate schedules, the weight-decay mask, AdamW's grouping."""

import jax
import numpy as np
import pytest

import models
import optim


def test_warmup_cosine_rises_linearly_then_falls_to_the_end_ratio():
    schedule = optim.warmup_cosine(1e-3, 10, 110, end_ratio=0.1)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(5e-4)
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(60)) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # half way down the cosine
    assert float(schedule(110)) == pytest.approx(1e-4)
    assert float(jax.jit(schedule)(60)) == pytest.approx(float(schedule(60)))


def test_warmup_linear_rises_then_decays_to_the_end_ratio():
    schedule = optim.warmup_linear(2e-3, 4, 104, end_ratio=0.0)
    assert [float(schedule(t)) for t in (0, 2, 4)] == pytest.approx([0.0, 1e-3, 2e-3])
    assert float(schedule(54)) == pytest.approx(1e-3)
    assert float(schedule(104)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("make", [optim.warmup_cosine, optim.warmup_linear])
def test_warmup_longer_than_training_is_refused(make):
    with pytest.raises(ValueError, match="warmup_steps=20 must lie in"):
        make(1e-3, 20, 10)


def test_weight_decay_applies_to_matrices_only():
    module, _ = models.create("gpt2-tiny")
    mask = optim.decay_mask(models.param_shapes(module))
    block = mask["blocks_0"]
    assert block["attn"]["query"]["kernel"] and block["mlp"]["fc"]["kernel"] and block["mlp"]["proj"]["kernel"]
    assert not block["attn"]["query"]["bias"] and not block["ln_1"]["scale"] and not block["ln_1"]["bias"]
    assert not mask["wte"]["embedding"] and not mask["wpe"]["embedding"] and not mask["ln_f"]["scale"]


def test_adamw_leaves_undecayed_parameters_alone_when_gradients_are_zero():
    params = {"dense": {"kernel": np.ones((2, 2), np.float32), "bias": np.ones(2, np.float32)}}
    tx = optim.adamw(1.0, weight_decay=0.5, clip_norm=None)
    zeros = jax.tree.map(np.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.5)  # decoupled decay: -lr * wd * w
    np.testing.assert_array_equal(updates["dense"]["bias"], 0.0)
