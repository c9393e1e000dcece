"""Attention-head pruning: the pruned model equals the full one with those heads silenced; Michel et
al.'s importance; selection, checkpoints and Hugging Face conversion."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from conftest import jaxlm
from test_adaptive_softmax import cached_equals_recomputed

import models
from models import hf
from models.heads_pruning import head_importance, prune_heads, restore_heads, select_heads
from models.layers import stack_layers, unstack_layers
from train.checkpoint import load_params, save_params


def _model(name, **overrides):
    module, config = models.create(name, **overrides)
    params = models.init_params(module, jax.random.key(1))
    # Random biases too, so a removed head's bias would show if it leaked into the output.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    return module, config, params


def _silence(config, params, pruned):
    """The full model with the listed heads' outputs zeroed (their rows of the output projection)."""
    layers = unstack_layers(params, config.n_layer, config.scan_layers, "blocks")
    out = []
    for layer, heads in zip(layers, pruned):
        kernel = np.array(layer["attn"]["out"]["kernel"])
        kernel[list(heads)] = 0
        out.append({**layer, "attn": {**layer["attn"], "out": {**layer["attn"]["out"], "kernel": kernel}}})
    rest = {k: v for k, v in params.items() if not k.startswith("blocks")}
    return {**rest, **stack_layers(out, config.scan_layers, "blocks")}


def _logits(module, params, ids):
    out = module.apply({"params": params}, ids, attention_mask=np.ones_like(ids))
    return np.asarray(out["mlm_logits"] if isinstance(out, dict) else out)


@pytest.mark.parametrize("name, scanned, pruned", [
    ("gpt2-tiny", False, [[1, 3], [0]]),
    ("gpt2-tiny", True, [[1, 3], [0, 2]]),
    ("bert-tiny", False, [[1], []]),
])
def test_pruned_model_equals_full_model_with_heads_zeroed(name, scanned, pruned):
    module, config, params = _model(name, scan_layers=scanned)
    ids = np.random.RandomState(0).randint(0, config.vocab_size, (2, 11))
    small_config, small = prune_heads(config, params, pruned)
    assert models.count_params(small) < models.count_params(params)
    assert small_config.pruned_heads == tuple(tuple(p) for p in pruned) or not any(pruned)
    expected = _logits(module, _silence(config, params, pruned), ids)
    np.testing.assert_allclose(_logits(small_config.module(), small, ids), expected, atol=1e-5, rtol=0)
    # Back to full shapes with the heads zeroed: the same function again.
    full_config, full = restore_heads(small_config, small)
    np.testing.assert_allclose(_logits(full_config.module(), full, ids), expected, atol=1e-5, rtol=0)


def test_pruning_twice_counts_original_heads():
    module, config, params = _model("gpt2-tiny")
    once_config, once = prune_heads(config, params, [[1], [2]])
    twice_config, twice = prune_heads(once_config, once, [[1, 3], [0, 2]])
    direct_config, direct = prune_heads(config, params, [[1, 3], [0, 2]])
    assert twice_config == direct_config
    jax.tree.map(np.testing.assert_array_equal, twice, direct)
    with pytest.raises(ValueError, match="already pruned and cannot come back"):
        prune_heads(once_config, once, [[3], [2]])


def _lm_loss(module):
    def loss(params, batch):
        logits = module.apply({"params": params}, batch["inputs"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
    return loss


@pytest.mark.parametrize("scanned", [False, True])
def test_importance_is_the_mean_absolute_gate_gradient(scanned):
    """Against an explicit gate xi on each head's output (a scale on its output-projection rows)."""
    module, config, params = _model("gpt2-tiny", scan_layers=scanned)
    rng = np.random.RandomState(0)
    batch = {"inputs": rng.randint(0, 256, (3, 9)), "targets": rng.randint(0, 256, (3, 9))}
    got = head_importance(config, params, _lm_loss(module), [batch], normalize=False)

    def gated_loss(xi, example):
        layers = unstack_layers(params, 2, scanned, "blocks")
        layers = [{**lp, "attn": {**lp["attn"], "out": {**lp["attn"]["out"],
                                                         "kernel": lp["attn"]["out"]["kernel"] * xi[i][:, None, None]}}}
                  for i, lp in enumerate(layers)]
        gated = {**{k: v for k, v in params.items() if not k.startswith("blocks")},
                 **stack_layers([jax.tree.map(jnp.asarray, lp) for lp in layers], False, "blocks")}
        gated_module = dataclasses.replace(config, scan_layers=False).module()
        return _lm_loss(gated_module)(gated, jax.tree.map(lambda x: x[None], example))

    per_example = [np.abs(np.asarray(jax.grad(gated_loss)(jnp.ones((2, 4)), {k: v[i] for k, v in batch.items()})))
                   for i in range(3)]
    np.testing.assert_allclose(got, np.mean(per_example, axis=0), rtol=1e-4, atol=1e-7)
    normalized = head_importance(config, params, _lm_loss(module), [batch])
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, rtol=1e-6)


def test_selection_global_per_layer_and_refusals():
    _, config, _ = _model("gpt2-tiny")
    importance = np.array([[0.1, 0.9, 0.2, 0.8], [0.05, 0.01, 0.7, 0.6]])
    assert select_heads(config, importance, 3) == ((0,), (0, 1))
    assert select_heads(config, importance, 2, per_layer=True) == ((0, 2), (0, 1))
    # The global order would empty layer 1; each layer keeps one head.
    assert select_heads(config, np.array([[0.9, 0.9, 0.9, 0.9], [0.1, 0.1, 0.1, 0.1]]), 4) == ((0,), (0, 1, 2))
    with pytest.raises(ValueError, match="cannot prune 4 heads from every layer.*has 4 heads"):
        select_heads(config, importance, 4, per_layer=True)
    with pytest.raises(ValueError, match="cannot prune 7 heads: the model has 8"):
        select_heads(config, importance, 7)
    scanned = dataclasses.replace(config, scan_layers=True)
    with pytest.raises(ValueError, match="each layer must lose the same number of heads"):
        select_heads(scanned, importance, 3)


@pytest.mark.parametrize("pruned, message", [
    ([[4], []], "layer 0 has heads 0..3; there is no head 4"),
    ([[0, 1, 2, 3], []], "removes all 4 heads of layer 0"),
    ([[1]], "one list of head indices per layer"),
    ([[1, 1], []], "lists a head twice"),
])
def test_bad_pruned_heads_are_named(pruned, message):
    with pytest.raises(ValueError, match=message):
        models.create("gpt2-tiny", pruned_heads=pruned)
    with pytest.raises(ValueError, match="not supported for ALBERT"):
        models.create("albert-tiny", pruned_heads=[[1], [], [], []])


def test_pruned_checkpoint_and_hf_round_trip(tmp_path):
    module, config, params = _model("gpt2-tiny", n_positions=16)
    config, params = prune_heads(config, params, [[0, 3], [2]])
    save_params(tmp_path / "run", config, params, info={"source": "test"})
    _, loaded_config, loaded, source = load_params(tmp_path / "run")
    assert loaded_config == config and source.info == {"source": "test"} and source.config.model == config
    jax.tree.map(np.testing.assert_array_equal, loaded, params)

    hf.save_pretrained(tmp_path / "hf", config, params)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["pruned_heads"] == {"0": [0, 3], "1": [2]}
    _, back_config, back = hf.load_pretrained(tmp_path / "hf")
    assert back_config.pruned_heads == config.pruned_heads
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=0), back, params)

    # transformers 5 has no head pruning: the zero-padded full shapes load there and agree.
    full_config, full = restore_heads(config, params)
    hf.save_pretrained(tmp_path / "hf-full", full_config, full)
    reference = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf-full").eval()
    ids = np.random.RandomState(0).randint(0, config.vocab_size, (2, 12))
    with torch.no_grad():
        theirs = reference(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(_logits(config.module(), params, ids), theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("scanned, pruned", [(False, [[0, 1], [3]]), (True, [[0, 1], [2, 3]])])
def test_cached_decoding(scanned, pruned):
    _, config, params = _model("gpt2-tiny", scan_layers=scanned)
    small_config, small = prune_heads(config, params, pruned)
    cached_equals_recomputed(small_config.module(), small)


def test_prune_heads_of_a_run(corpus, tmp_path):
    """jaxlm prune RUN --out NEW: the run is only read; the new folder records the source run's config."""
    module, config, params = _model("gpt2-tiny", n_positions=32)
    root, spm = corpus
    run = save_params(tmp_path / "run", config, params, {"data.tokenizer": str(spm),
                                                         "data.train": str(root / "train.jsonl"), "data.seq_len": 32})
    before = sorted((str(p), p.stat().st_mtime_ns) for p in run.rglob("*"))
    result = jaxlm("prune", run, "--out", tmp_path / "pruned", "--heads", 3, "--batches", 1)
    assert sorted((str(p), p.stat().st_mtime_ns) for p in run.rglob("*")) == before
    _, loaded_config, loaded, source = load_params(tmp_path / "pruned")
    assert [list(h) for h in loaded_config.pruned_heads] == result["pruned_heads"]
    assert sum(len(h) for h in loaded_config.pruned_heads) == 3
    assert models.count_params(loaded) == models.count_params(params) - 3 * (4 * 8 * 32 + 3 * 8)
    assert source.info["source"] == str(run) and len(source.info["importance"]) == 2
    assert source.config.data == load_params(run)[3].config.data
