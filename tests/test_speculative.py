"""Speculative decoding (``models.speculative``): greedy output identical to the target's own,
sampling that keeps the target's distribution (a chi-square test a wrong acceptance rule fails),
drafts of several kinds, and bad drafts refused."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import models
from models import speculative
from models.generation import sample
from models.speculative import first_layers, speculative_sample


@functools.lru_cache
def _model(seed=0, **overrides):
    module, config = models.create("gpt2-tiny", **overrides)
    return module, models.init_params(module, jax.random.key(seed))


def _drafts():
    target, params = _model()
    return {
        "other model": _model(1, n_layer=1),  # unrelated: most proposals rejected
        "first layer": first_layers(target, params, 1),  # the target's own first layer
    }


@pytest.mark.parametrize("draft", ["other model", "first layer"])
def test_greedy_equals_the_targets_own_greedy_output(draft):
    """Prompts of lengths 1, 5 and 11 alone and as one batch, k = 1 and 3: token for token."""
    target, params = _model()
    draft_module, draft_params = _drafts()[draft]
    rng = np.random.RandomState(0)
    prompts = [list(rng.randint(0, 256, n)) for n in (1, 5, 11)]
    for k in (1, 3):
        for batch in ([p] for p in prompts), [prompts]:
            for group in batch:
                plain = sample(target, params, group, 12, temperature=0).ids
                fast = speculative_sample(target, params, draft_module, draft_params, group, 12, k=k, temperature=0)
                assert fast.ids == plain, (draft, k, len(group))
                assert 0 <= fast.accepted <= fast.proposed
    own = speculative_sample(target, params, target, params, prompts, 12, k=3, temperature=0)
    assert own.acceptance_rate == 1.0  # the target as its own draft: every proposal kept
    assert own.steps == 3  # the prefill gives token 1; each pass then keeps k + 1 = 4: 11 tokens in 3 passes


def test_greedy_stops_at_end_of_text():
    target, params = _model()
    draft_module, draft_params = _drafts()["other model"]
    plain = sample(target, params, [[3, 4, 5]], 16, temperature=0).ids[0]
    eos = plain[5]
    want = sample(target, params, [[3, 4, 5]], 16, temperature=0, eos_id=eos).ids[0]
    got = speculative_sample(target, params, draft_module, draft_params, [[3, 4, 5]], 16, k=4, temperature=0,
                             eos_id=eos).ids[0]
    assert got == want == plain[: plain.index(eos)]


def _pair_counts(target, params, draft, draft_params, draws, **options):
    """Counts of the first two new tokens over ``draws`` samples of one prompt (a tiny vocabulary)."""
    gen = speculative_sample(target, params, draft, draft_params, [[1, 2]], 2, k=3, num_samples=draws,
                             rng=jax.random.key(7), **options)
    vocab = target.config.vocab_size
    counts = np.zeros((vocab, vocab))
    for a, b in gen.ids:
        counts[a, b] += 1
    return counts


def _pair_probs(target, params, **options):
    """The target's own probabilities of the first two new tokens after the prompt [1, 2]."""
    vocab = target.config.vocab_size
    ids = np.array([[1, 2, t] for t in range(vocab)], np.int32)
    logits = np.asarray(target.apply({"params": params}, ids), np.float32)
    probs = lambda x: np.asarray(speculative.sampling_probs(  # noqa: E731
        jnp.asarray(x), options.get("temperature", 1.0), options.get("top_p", 1.0),
        top_k=options.get("top_k", 0), nucleus=options.get("top_p", 1.0) < 1))
    return probs(logits[0, 1])[:, None] * probs(logits[:, 2])


def _chi_square_p(counts, expected_probs):
    keep = expected_probs.ravel() > 0
    if counts.ravel()[~keep].sum():  # drew a pair the target gives probability 0
        return 0.0
    expected = expected_probs.ravel()[keep] * counts.sum()
    observed = counts.ravel()[keep]
    # cells with small expectations are merged, so the chi-square approximation holds
    small = expected < 5
    if small.any():
        observed = np.append(observed[~small], observed[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    return stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue


@pytest.mark.parametrize("options", [dict(temperature=1.0), dict(temperature=0.8, top_k=5)])
def test_sampling_keeps_the_targets_distribution(options, monkeypatch):
    """4,000 draws of the first two tokens (an 8-token vocabulary, 64 cells) against the target's
    own probabilities: ours passes a chi-square test; accepting every proposal fails it."""
    # large initial weights: distributions far from uniform, and far from each other
    target, params = _model(0, vocab_size=8, initializer_range=0.5)
    draft, draft_params = _model(1, vocab_size=8, n_layer=1, initializer_range=0.5)
    expected = _pair_probs(target, params, **options)
    counts = _pair_counts(target, params, draft, draft_params, 4000, temperature=options["temperature"],
                          top_k=options.get("top_k", 0))
    assert _chi_square_p(counts, expected) > 1e-3
    monkeypatch.setattr(speculative, "accept", lambda p, q, u: jnp.ones_like(p, bool))  # a wrong rule
    speculative.speculative_decode.clear_cache()
    wrong = _pair_counts(target, params, draft, draft_params, 4000, temperature=options["temperature"],
                         top_k=options.get("top_k", 0))
    speculative.speculative_decode.clear_cache()
    assert _chi_square_p(wrong, expected) < 1e-6


def test_bad_drafts_are_refused():
    target, params = _model()
    for overrides, words in [(dict(vocab_size=128), "vocabulary"), (dict(n_positions=32), "context")]:
        draft, draft_params = _model(1, **overrides)
        with pytest.raises(ValueError, match=words):
            speculative_sample(target, params, draft, draft_params, [[1, 2]], 4, k=2)
    with pytest.raises(ValueError, match="at least 1"):
        speculative_sample(target, params, target, params, [[1, 2]], 4, k=0)
    bert, _ = models.create("bert-tiny")
    with pytest.raises(ValueError, match="decoder"):
        speculative_sample(target, params, bert, {}, [[1, 2]], 4, k=2)
    with pytest.raises(ValueError, match="context"):  # the prompt, the new tokens and k must fit
        speculative_sample(target, params, target, params, [[1] * 50], 10, k=5)


def test_first_layers_is_the_targets_truncation():
    target, params = _model()
    draft, draft_params = first_layers(target, params, 1)
    assert draft.config == dataclasses.replace(target.config, n_layer=1)
    assert draft_params["blocks_0"] is params["blocks_0"] and "blocks_1" not in draft_params
    with pytest.raises(ValueError, match="1 to 1"):
        first_layers(target, params, 2)


@pytest.mark.slow
def test_speculative_rows_join_the_inference_table():
    """``jaxlm benchmark --mode infer --draft --speculate``: rows timed with the fp32 baseline in
    the same rounds, greedy output equal to its own, and the draft's acceptance (the target as
    its own draft keeps every proposal)."""
    from bench import inference

    spec = inference.InferSpec(model="gpt2-tiny", variants=("float32",), batch_sizes=(1, 2), prompt_len=4,
                               new_tokens=8, rounds=1, quality_tokens=0, encoder=False, references=(),
                               draft="gpt2-tiny", speculate=(1, 3))
    result = inference.compare_inference(spec)
    for k in (1, 3):
        row = result["rows"][f"speculative k={k}"]
        assert row["kind"] == "speculative" and row["decode_b2"]["acceptance_rate"] == 1.0
        assert row["decode_b1"]["target_passes"] == -(-7 // (k + 1))  # 8 tokens: 1 from the prefill, k + 1 a pass
        assert row["quality"]["greedy_agreement"] == 1.0 and row["decode_b1"]["vs_fp32"] > 0
        assert f"| ours float32, speculative k={k} |" in result["markdown"]
    with pytest.raises(ValueError, match="draft"):
        inference.InferSpec(speculate=(2,))
