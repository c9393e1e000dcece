"""Gradual magnitude pruning: the schedule, exact masks, zeros that survive training and resumption."""

import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import jaxlm, tiny_config

from optim.groups import path_str
from optim.pruning import PruningConfig, magnitude_masks, magnitude_pruning
from train.checkpoint import load_params
from train.config import TrainConfig
from train.loop import train
from train.metrics import read_metrics


def test_polynomial_schedule():
    c = PruningConfig(target_sparsity=0.8, initial_sparsity=0.1, begin_step=10, end_step=50, every=10)
    s = np.array([float(c.sparsity(t)) for t in range(0, 70)])
    assert s[:10].tolist() == [0.0] * 10
    assert s[10] == pytest.approx(0.1) and s[50:].tolist() == pytest.approx([0.8] * 20)
    assert s[30] == pytest.approx(0.8 + (0.1 - 0.8) * 0.5**3)  # Zhu & Gupta's cubic
    assert np.all(np.diff(s[10:]) >= 0)
    updates = [t for t in range(70) if bool(c.updates_masks(t))]
    assert updates == [10, 20, 30, 40, 50]
    uneven = PruningConfig(target_sparsity=0.5, begin_step=0, end_step=25, every=10)
    assert [t for t in range(40) if bool(uneven.updates_masks(t))] == [0, 10, 20, 25]


def test_masks_drop_exactly_the_smallest_per_slice():
    w = jax.random.normal(jax.random.key(0), (3, 7, 5))
    keep = magnitude_masks(w, 0.4, slice_axes=1)
    for layer in range(3):
        assert int((~keep[layer]).sum()) == round(0.4 * 35)
        dropped, kept = np.abs(w[layer])[~keep[layer]], np.abs(w[layer])[keep[layer]]
        assert dropped.max() <= kept.min()
    # Without slices the threshold is global to the tensor.
    assert int((~magnitude_masks(w, 0.4)).sum()) == round(0.4 * 105)


@pytest.mark.parametrize("values, message", [
    ({"target_sparsity": 1.0}, r"target_sparsity=1.0 must lie in \[0, 1\)"),
    ({"target_sparsity": -0.1}, "must lie in"),
    ({"target_sparsity": 0.5, "begin_step": 9, "end_step": 3}, "begin_step <= end_step"),
    ({"target_sparsity": 0.5, "sparsity": 0.5}, "optimizer.pruning: The fields sparsity are not valid"),
    ({"target_sparsity": "half"}, "optimizer.pruning.target_sparsity: Couldn't parse 'half' into a float"),
    ({"begin_step": 3}, "optimizer.pruning: Missing required field.* target_sparsity"),
])
def test_bad_pruning_settings_are_named(values, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig().replace({"optimizer.pruning": values})


def test_a_pruning_window_outside_the_run_is_refused_when_the_config_is_built(capsys):
    message = ("optimizer.pruning ends at step 10, after the run's last step (8): the target sparsity 0.5 would never "
               "be reached; set optimizer.pruning.end_step at most 8")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        TrainConfig().replace({"steps": 8, "optimizer.warmup_steps": 2,
                               "optimizer.pruning": {"target_sparsity": 0.5, "end_step": 10}})
    with pytest.raises(SystemExit) as e:
        jaxlm("train", "--set", "steps=8", "--set", "optimizer.warmup_steps=2", "--set",
              "optimizer.pruning.target_sparsity=0.5", "--set", "optimizer.pruning.end_step=10", "--print-config")
    assert e.value.code == 2 and capsys.readouterr().err == f"error: {message}\n"


def test_transformation_keeps_masked_weights_at_zero():
    """On a toy problem whose gradient pushes every weight away from zero."""
    params = {"blocks": {"kernel": jnp.arange(1.0, 21.0).reshape(4, 5)}, "bias": jnp.ones(3)}
    tx = optax.chain(optax.sgd(0.1), magnitude_pruning(
        PruningConfig(target_sparsity=0.5, begin_step=0, end_step=4, every=2, pattern="kernel$"), stacked="blocks"))
    state = tx.init(params)
    grads = jax.tree.map(lambda p: -jnp.ones_like(p), params)
    for _ in range(8):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    kernel = np.asarray(params["blocks"]["kernel"])
    assert ((kernel == 0).sum(axis=1) == [2, 2, 2, 2]).all()  # round(0.5 * 5) per stacked slice
    assert (kernel[:, :2] == 0).all() and (kernel[:, 2:] > 0).all()  # the smallest went
    assert (np.asarray(params["bias"]) != 0).all()


def _pruned_kernels(params, scanned):
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if path and path_str(path).endswith("kernel") and "blocks" in path_str(path):
            for layer in (np.asarray(leaf) if scanned else np.asarray(leaf)[None]):
                yield path_str(path), layer


PRUNING = {"target_sparsity": 0.75, "begin_step": 2, "end_step": 8, "every": 3}


@pytest.mark.slow
@pytest.mark.parametrize("scanned", [False, True])
def test_zeros_survive_training_and_resumption(corpus, tmp_path, scanned):
    """A run resumed from step 4 (before the masks reach the target) ends bitwise equal to the
    uninterrupted run, with exactly the target sparsity in every layer; the summary and the
    training metrics report the sparsity."""
    config = tiny_config(corpus, tmp_path / "whole", **{"optimizer.pruning": PRUNING, "model.scan_layers": scanned})
    summary = train(config)
    assert summary["sparsity"] == pytest.approx(0.75) and 0 < summary["overall_sparsity"] < 0.75
    rows = [r for r in read_metrics(tmp_path / "whole") if r["split"] == "train"]
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12]
    sparsity = [r["sparsity"] for r in rows]  # masks recomputed at steps 3, 6 and 9 (begin_step 2, every 3)
    assert sparsity[0] == 0 and sparsity == sorted(sparsity) and 0 < sparsity[2] < 0.75
    assert sparsity[-1] == pytest.approx(0.75)
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    for step in ("8", "12"):
        shutil.rmtree(tmp_path / "resumed" / "checkpoints" / step)
    assert train(config.replace({"run_dir": str(tmp_path / "resumed")}))["start_step"] == 4
    a, b = load_params(tmp_path / "whole")[2], load_params(tmp_path / "resumed")[2]
    for (name, x), (_, y) in zip(_pruned_kernels(a, scanned), _pruned_kernels(b, scanned)):
        assert int((x == 0).sum()) == round(0.75 * x.size), name  # exactly the target, in every layer
        np.testing.assert_array_equal(x, y)
    assert float(np.abs(np.asarray(a["wte"]["embedding"])).min()) > 0  # not matched by the pattern
