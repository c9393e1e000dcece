"""The ULMFiT optimizer pieces: STLR against equation 3, discriminative rates per slice, and
freezing / gradual unfreezing checked bit for bit on unrolled, stacked and shared layers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import models
import optim


def eq3(t, total, peak, cut_frac, ratio):
    """The paper's equation 3, in float64."""
    cut = math.floor(total * cut_frac)
    p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / cut_frac - 1))
    return peak * (1 + p * (ratio - 1)) / ratio


@pytest.mark.parametrize("total,cut_frac,ratio", [(200, 0.1, 32), (1000, 0.25, 8), (37, 0.3, 1)])
def test_stlr_follows_equation_3_eagerly_and_under_jit(total, cut_frac, ratio):
    schedule = optim.stlr(total, 3e-3, cut_frac=cut_frac, ratio=ratio)
    cut = math.floor(total * cut_frac)
    steps = sorted({0, 1, cut // 2, cut - 1, cut, cut + 1, (cut + total) // 2, total - 2})
    jitted = jax.jit(schedule)
    for t in steps:
        expected = eq3(t, total, 3e-3, cut_frac, ratio)
        assert float(schedule(t)) == pytest.approx(expected, rel=1e-6), t
        assert float(jitted(jnp.int32(t))) == pytest.approx(expected, rel=1e-6), t
    assert float(schedule(cut)) == pytest.approx(3e-3, rel=1e-6)  # the peak, at the cut
    assert float(schedule(0)) == pytest.approx(3e-3 / ratio, rel=1e-6)


def test_stlr_holds_the_lowest_rate_where_the_floor_ends_the_decay_early():
    # T = 15, cut_frac = 0.1: cut = 1, and eq. 3 reaches p = 0 at t = 10, then would go negative.
    schedule = optim.stlr(15, 1.0, cut_frac=0.1, ratio=32)
    assert float(schedule(10)) == pytest.approx(eq3(10, 15, 1.0, 0.1, 32)) == pytest.approx(1 / 32)
    assert [float(schedule(t)) for t in (11, 14, 20)] == pytest.approx([1 / 32] * 3)


@pytest.mark.parametrize("kwargs,message", [
    (dict(cut_frac=0.0), "cut_frac=0.0 must lie strictly between 0 and 1"),
    (dict(cut_frac=1.0), "cut_frac=1.0 must lie strictly between 0 and 1"),
    (dict(cut_frac=-0.5), "cut_frac=-0.5 must lie strictly"),
    (dict(ratio=0.5), "ratio=0.5 must be at least 1"),
    (dict(total_steps=0), "total_steps >= 1, got 0"),
    (dict(total_steps=5), r"cut = floor\(total_steps \* cut_frac\) = floor\(5 \* 0.1\) = 0 .* at least 10"),
])
def test_stlr_refuses_bad_parameters(kwargs, message):
    args = dict(total_steps=100, peak_value=1e-3) | kwargs
    with pytest.raises(ValueError, match=message):
        optim.stlr(**args)


def test_adam_without_step_counts_matches_optax():
    params = {"a": jnp.linspace(-1, 1, 12).reshape(3, 4), "b": jnp.arange(6.0)}
    grads = jax.tree.map(lambda x: jnp.sin(3 * x + 1), params)
    ours, theirs = optim.adamw(1e-2, weight_decay=0.1, clip_norm=None), optax.adamw(
        1e-2, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, mask=optim.decay_mask)
    s1, s2 = ours.init(params), theirs.init(params)
    for _ in range(4):
        u1, s1 = ours.update(grads, s1, params)
        u2, s2 = theirs.update(grads, s2, params)
        for x, y in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=0)  # a few ulp: XLA fuses the two differently


def test_discriminative_rates_scale_each_slice_by_its_depth():
    depths = {"embed": np.int32(0), "stack": np.arange(1, 4, dtype=np.int32), "head": np.int32(4)}
    params = {"embed": jnp.ones((5, 2)), "stack": jnp.ones((3, 2, 2)), "head": jnp.ones((2,))}
    tx = optim.discriminative_rates(depths, factor=2.6)
    updates, _ = jax.jit(tx.update)(params, tx.init(params))
    assert np.all(np.asarray(updates["head"]) == 1.0)
    assert np.allclose(updates["embed"], 2.6 ** -4)
    for i in range(3):
        assert np.allclose(updates["stack"][i], 2.6 ** -(3 - i)), i
    with pytest.raises(ValueError, match="factor=0 must be positive"):
        optim.discriminative_rates(depths, factor=0)
    with pytest.raises(ValueError, match=r"depths of stack have shape \(3,\), not a prefix .* \(2, 3\)"):
        tx.update({**params, "stack": jnp.ones((2, 3))}, tx.init(params))


def test_more_unfreezing_stages_than_groups_is_refused():
    depths = {"a": np.int32(0), "b": np.arange(1, 3, dtype=np.int32)}
    with pytest.raises(ValueError, match="9 unfreezing stages, but the depths form 3 groups"):
        optim.gradual_unfreezing(optim.adamw(1e-3), depths, stage_steps=4, stages=9)
    with pytest.raises(ValueError, match="stage_steps >= 1"):
        optim.gradual_unfreezing(optim.adamw(1e-3), depths, stage_steps=0)
    with pytest.raises(ValueError, match="optax.scale_by_adam .* one step count"):
        optim.gradual_unfreezing(optax.adamw(1e-3), depths, stage_steps=4).init(
            {"a": jnp.ones(2), "b": jnp.ones((2, 3))})


# --- Freezing and gradual unfreezing on real models -------------------------------------------

BODIES = {
    "unrolled": ("gpt2-tiny", {}),
    "stacked": ("gpt2-tiny", {"scan_layers": True}),
    "shared": ("albert-tiny", {}),
    "shared-scanned": ("albert-tiny", {"scan_layers": True}),
}


def _classifier(kind):
    name, overrides = BODIES[kind]
    body = models.get_config(name, **overrides).without_dropout()
    config = models.ClassifierConfig(body, ("no", "yes"), pooling="concat", dropout=0.0)
    module = config.module()
    params = models.init_params(module, jax.random.key(0))
    return module, config, params


def _batch(step):
    rng = np.random.RandomState(step)
    return jnp.asarray(rng.randint(4, 200, (4, 12))), jnp.asarray(rng.randint(0, 2, 4))


def _loss(module, params, ids, labels):
    logits = module.apply({"params": params}, ids)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _slices(tree, depths):
    """(path, depth, slice) for every slice of every leaf: a stacked leaf gives one per layer."""
    out = []
    for (path, x), d in zip(jax.tree_util.tree_flatten_with_path(tree)[0], jax.tree.leaves(depths)):
        x, d = np.asarray(x), np.asarray(d)
        for index in np.ndindex(d.shape):
            out.append((jax.tree_util.keystr(path) + str(index), int(d[index]), x[index]))
    return out


def _moments(opt_state):
    """Adam's first and second moments (trees like the parameters) inside a TrainFromStepState."""
    adam = next(s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optim.optimizers.ScaleByAdamState))
                if isinstance(s, optim.optimizers.ScaleByAdamState))
    return adam.mu, adam.nu


@pytest.mark.parametrize("kind,b2", [(kind, 0.999) for kind in BODIES] + [("stacked", 0.95)])
def test_gradual_unfreezing_is_exact(kind, b2):
    module, config, params = _classifier(kind)
    depths = models.param_depths(config, params)
    top = optim.check_depths(depths, params)
    stage_steps = 2

    def inner():
        return optax.chain(optim.adamw(1e-2, b1=0.9, b2=b2, weight_decay=0.01, clip_norm=1.0),
                           optim.discriminative_rates(depths))

    tx = optim.gradual_unfreezing(inner(), depths, stage_steps)
    fresh = inner()
    fresh_update = jax.jit(fresh.update)  # its state an argument, as in training, not a constant to fold
    traces = []

    @jax.jit
    def step(params, opt_state, ids, labels):
        traces.append(1)  # runs once per compilation
        grads = jax.grad(_loss, argnums=1)(module, params, ids, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, updates, grads

    start = {d: stage_steps * (top - d) for d in range(top + 1)}
    state = tx.init(params)
    history = [(params, _moments(state))]
    first_updates = {}
    for t in range((top + 1) * stage_steps):
        new_params, state, updates, grads = step(params, state, *_batch(t))
        trainable = jax.tree.map(lambda d: np.asarray(d) >= top - t // stage_steps, depths)
        if t in start.values() and t > 0:
            # A fresh optimizer, given the same (frozen-masked) gradients at this step.
            masked = jax.tree.map(lambda g, m: jnp.where(optim.per_slice(jnp.asarray(m), g), g, 0), grads, trainable)
            first_updates[t] = (updates, fresh_update(masked, fresh.init(params), params)[0])
        params = new_params
        history.append((params, _moments(state)))
    assert len(traces) == 1, "moving to the next stage recompiled the step"

    # Frozen slices: parameters and both moments bit-identical to their initial values until their
    # stage starts; afterwards they move.
    initial = _slices(history[0][0], depths)
    for t, (p, (mu, nu)) in enumerate(history):
        for (where, d, x), (_, _, x0), (_, _, m), (_, _, v) in zip(
                _slices(p, depths), initial, _slices(mu, depths), _slices(nu, depths)):
            if t <= start[d]:
                assert np.array_equal(x, x0) and not m.any() and not v.any(), (t, where)
            elif np.any(m):  # some slices get no gradient at all (an unused position row)
                assert not np.array_equal(x, x0), (t, where)

    # The first update of each newly unfrozen group is the fresh optimizer's, bit for bit.
    for t, (updates, fresh_updates) in first_updates.items():
        d = top - t // stage_steps
        pairs = [(w, a, b) for (w, dd, a), (_, _, b) in zip(_slices(updates, depths), _slices(fresh_updates, depths))
                 if dd == d]
        assert pairs
        for where, ours, fresh in pairs:
            assert np.array_equal(ours, fresh), (t, where, np.abs(ours - fresh).max())


@pytest.mark.parametrize("b2,expected", [(0.999, 3.16), (0.95, 0.447)])
def test_one_global_count_would_misscale_the_first_update_after_unfreezing(b2, expected):
    """What the per-group counts prevent: Adam corrected with the global count s + 1 instead of 1
    gives a group's first update (1 - b1) / sqrt(1 - b2) times the right size for large s."""
    adam, g = optim.scale_by_adam(0.9, b2), {"w": jnp.array([0.3, -2.0, 1e-3])}
    right, _ = adam.update(g, adam.init(g), step_counts={"w": jnp.int32(1)})
    wrong, _ = adam.update(g, adam.init(g), step_counts={"w": jnp.int32(20_001)})
    np.testing.assert_allclose(np.asarray(wrong["w"]) / np.asarray(right["w"]), expected, rtol=5e-3)


def test_freeze_trains_only_the_heads():
    module, config, params = _classifier("stacked")
    depths = models.param_depths(config, params)
    tx = optim.freeze(optim.adamw(1e-2), depths)
    state = tx.init(params)
    grads = jax.grad(_loss, argnums=1)(module, params, *_batch(0))
    update = jax.jit(tx.update)
    for _ in range(2):
        updates, state = update(grads, state, params)
        params_next = optax.apply_updates(params, updates)
    top = config.head_depth
    for (where, d, x), (_, _, x0) in zip(_slices(params_next, depths), _slices(params, depths)):
        assert np.array_equal(x, x0) == (d < top), where
