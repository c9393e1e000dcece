"""KV-cache decoding (``GPT(decode=True)``, ``models.generation``): cached logits equal recomputed
ones, the sampling options, several samples of one prompt, and bad requests."""

import dataclasses
import functools
import re

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import jaxlm

import models
from models.generation import bucket, init_cache, left_pad, sample


@functools.lru_cache
def _model(scan_layers=False, **overrides):
    module, config = models.create("gpt2-tiny", scan_layers=scan_layers, **overrides)
    return module, config, models.init_params(module, jax.random.key(0))


@functools.lru_cache
def _forward(module):
    return jax.jit(module.apply)


def _recompute(module, params, prompt, width=32):
    """Logits of every position of one sequence, without a cache: the sequence is followed by
    padding up to ``width`` (one compiled function), which a causal model never looks at."""
    ids = np.zeros((1, width), np.int32)
    ids[0, : len(prompt)] = prompt
    return np.asarray(_forward(module)({"params": params}, ids))[0, : len(prompt)]


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cached_logits_equal_recomputed_ones(scan_layers):
    """Left-padded prompts of lengths 1, 4 and 7 are read in two chunks, then three tokens are fed
    one at a time; every real position's logits equal those of the row recomputed alone."""
    module, config, params = _model(scan_layers)
    rng = np.random.RandomState(0)
    prompts = [list(rng.randint(0, config.vocab_size, n)) for n in (1, 4, 7)]
    fed = rng.randint(0, config.vocab_size, (3, 3))
    ids, mask = left_pad(prompts, 7)
    step = jax.jit(functools.partial(module.apply, decode=True, mutable=["cache"]))
    cache = init_cache(module, 3, 10)
    logits = []
    for chunk in (slice(0, 5), slice(5, 7)):
        out, cache = step({"params": params, "cache": cache}, ids[:, chunk], attention_mask=mask[:, chunk])
        cache = cache["cache"]
        logits.append(np.asarray(out))
    for t in range(3):
        out, cache = step({"params": params, "cache": cache}, fed[:, t:t + 1])
        cache = cache["cache"]
        logits.append(np.asarray(out))
    logits = np.concatenate(logits, axis=1)  # [3, 10, vocab]
    for row, prompt in enumerate(prompts):
        full = _recompute(module, params, prompt + list(fed[row]))
        real = np.concatenate([mask[row].astype(bool), [True] * 3])
        np.testing.assert_allclose(logits[row, real], full, atol=1e-4, rtol=0)
    assert cache["index"].tolist() == [10, 10, 10] and cache["mask"].sum(-1).tolist() == [4, 7, 10]


def test_greedy_batch_follows_the_argmax_of_recomputed_logits():
    module, config, params = _model()
    prompts = [[5, 17, 3], [9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]]
    out = sample(module, params, prompts, 5, temperature=0.0)
    for prompt, new in zip(prompts, out.ids):
        seq = list(prompt)
        for _ in range(5):
            seq.append(int(np.argmax(_recompute(module, params, seq)[-1])))
        assert new == seq[len(prompt):]
    assert out.steps == 5 and out.new_tokens == 15 and out.tokens_per_s > 0 and out.compile_seconds > 0


def test_rows_stop_at_end_of_text():
    module, config, params = _model()
    prompts = [[5, 17, 3], [9, 9]]
    greedy = sample(module, params, prompts, 6, temperature=0.0).ids
    eos = greedy[0][2]  # row 0 emits it third; row 1 stops wherever it first emits it, if at all
    stopped = sample(module, params, prompts, 6, temperature=0.0, eos_id=eos).ids
    for full, cut in zip(greedy, stopped):
        assert cut == (full[: full.index(eos)] if eos in full else full)


def test_samples_of_one_prompt_read_it_once():
    """The prefill runs on one row, then the loop on ``num_samples`` rows: recorded while tracing."""
    module, config, params = _model(n_head=2)  # a config of its own, so this traces afresh
    seen = []

    def record(f, args, kwargs, context):
        if isinstance(context.module, models.GPT) and context.method_name == "__call__":
            seen.append(args[0].shape)
        return f(*args, **kwargs)

    with nn.intercept_methods(record):
        out = sample(module, params, [[5, 17, 3]], 4, num_samples=3, temperature=1.0, rng=jax.random.key(1))
    assert (1, bucket(3, 60)) in seen and (3, 1) in seen and not any(s[0] == 3 and s[1] > 1 for s in seen)
    assert len(out.ids) == 3 and len({tuple(ids) for ids in out.ids}) > 1


def test_top_k_and_top_p_cuts():
    module, config, params = _model()
    prompts, greedy = [[5, 17, 3]], sample(module, params, [[5, 17, 3]], 4, temperature=0.0).ids
    assert sample(module, params, prompts, 4, temperature=1.0, top_k=1, rng=jax.random.key(2)).ids == greedy
    assert sample(module, params, prompts, 4, temperature=1.0, top_p=1e-6, rng=jax.random.key(2)).ids == greedy
    both = sample(module, params, prompts, 4, temperature=2.0, top_k=5, top_p=0.5, num_samples=4,
                  rng=jax.random.key(3)).ids
    assert all(len(ids) == 4 and all(0 <= t < config.vocab_size for t in ids) for ids in both)


def test_only_ids_below_the_tokenizer_vocabulary_are_sampled():
    module, config, params = _model()
    out = sample(module, params, [[5, 17, 3]], 8, temperature=5.0, num_samples=8, vocab_size=10, rng=jax.random.key(4))
    assert all(0 <= t < 10 for ids in out.ids for t in ids)


def test_prompts_pad_to_power_of_two_buckets():
    assert [bucket(n, 1000) for n in (1, 16, 17, 100)] == [16, 16, 32, 128]
    assert bucket(100, 110) == 110  # never past the room the new tokens leave


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompts=[[]]), "prompt 0 is empty"),
    (dict(prompts=[]), "no prompts"),
    (dict(max_new_tokens=62), r"prompt \(3 tokens\) \+ 62 new tokens exceed the context of 64 .*at most 61 new"),
    (dict(prompts=[[5] * 64]), r"the prompt \(64 tokens\) leaves no room .* context of 64 .*shorten it to at most 63"),
    (dict(prompts=[[5] * 80]), r"the prompt \(80 tokens\) leaves no room"),
    (dict(max_new_tokens=0), r"--max-new-tokens=0: ask for at least one new token"),
    (dict(top_p=0.0), r"--top-p=0.0 must lie in \(0, 1\]"),
    (dict(top_p=1.5), r"--top-p=1.5 must lie in \(0, 1\]"),
    (dict(top_p=float("nan")), r"--top-p=nan must lie in \(0, 1\]"),
    (dict(temperature=-0.5), "--temperature=-0.5 must be a finite number, 0 or more"),
    (dict(temperature=float("nan")), "--temperature=nan must be a finite number"),
    (dict(temperature=float("inf")), "--temperature=inf must be a finite number"),
    (dict(top_k=-1), "--top-k=-1 is negative"),
    (dict(top_k=300), "--top-k=300 exceeds the model's vocabulary of 256"),
    (dict(num_samples=0), "--num-samples=0 must be at least 1"),
    (dict(prompts=[[1, 999]]), "token ids out of range"),
    (dict(vocab_size=300), "vocab_size=300 must lie in 1..256"),
])
def test_bad_requests_are_refused_with_the_fix(kwargs, message):
    module, config, params = _model()
    request = dict(prompts=[[5, 17, 3]], max_new_tokens=4) | kwargs
    with pytest.raises(ValueError, match=message) as e:
        sample(module, params, request.pop("prompts"), **request)
    assert "\n" not in str(e.value)


def test_encoders_cannot_generate():
    module, _ = models.create("bert-tiny")
    with pytest.raises(ValueError, match="needs a decoder"):
        sample(module, {}, [[1, 2]], 4)


def test_remat_setting_does_not_change_decoding():
    module, config, params = _model()
    remat = dataclasses.replace(config, remat="full").module()
    assert sample(remat, params, [[5, 17, 3]], 3, temperature=0.0).ids == \
        sample(module, params, [[5, 17, 3]], 3, temperature=0.0).ids


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "nan"], "--temperature=nan must be a finite number"),
    (["--top-p", "0"], r"--top-p=0.0 must lie in \(0, 1\]"),
    (["--top-k", "-2"], "--top-k=-2 is negative"),
    (["--num-samples", "0"], "--num-samples=0 must be at least 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens=0: ask for at least one new token"),
])
def test_jaxlm_generate_refuses_bad_flags_before_loading(tmp_path, capsys, flags, message):
    """One line naming the flag and exit status 2, before the (here missing) checkpoint is read."""
    with pytest.raises(SystemExit) as e:
        jaxlm("generate", tmp_path / "no-such-run", "--prompt", "the", *flags)
    assert e.value.code == 2
    (error,) = capsys.readouterr().err.splitlines()
    assert re.match(f"error: {message}", error), error
