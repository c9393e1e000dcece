"""The selectable fast paths compute today's function: the chunked language-model loss, the
cuDNN attention setting (XLA's path on this CPU), the CPU's blocked attention and the decode
cache's attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from train.tasks import LanguageModeling


def _loss_and_grads(chunk: int, vocab: int = 1024, length: int = 40):
    module, _ = models.create("gpt2-tiny", vocab_size=vocab, logits_chunk=chunk)
    params = models.init_params(module, jax.random.key(0))
    rng = np.random.default_rng(0)
    batch = {"inputs": jnp.asarray(rng.integers(0, vocab, (4, length))),
             "targets": jnp.asarray(rng.integers(0, vocab, (4, length))),
             "weights": jnp.asarray((rng.random((4, length)) > 0.2).astype(np.float32))}
    step = jax.jit(jax.value_and_grad(lambda p: LanguageModeling.loss(module, {"params": p}, batch, jax.random.key(1),
                                                                      True)[0]))
    loss, grads = step(params)
    return loss, grads, step.lower(params).compile().memory_analysis().temp_size_in_bytes


def test_chunked_loss_equals_the_whole_one_and_holds_less():
    loss, grads, whole_bytes = _loss_and_grads(0)
    for chunk in (16, 7):  # a chunk that divides the length, and one that leaves a padded last chunk
        chunked, chunked_grads, chunked_bytes = _loss_and_grads(chunk)
        np.testing.assert_allclose(chunked, loss, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(chunked_grads), jax.tree.leaves(grads)):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
        assert chunked_bytes < whole_bytes


def test_cudnn_attention_setting_computes_the_same_function():
    ids = np.random.default_rng(0).integers(0, 256, (2, 12))
    mask = np.ones((2, 12), np.int32)
    mask[1, :3] = 0
    outputs = {}
    for attention in ("xla", "cudnn"):
        module, _ = models.create("gpt2-tiny", attention=attention)
        outputs[attention] = module.apply({"params": models.init_params(module, jax.random.key(0))}, ids,
                                          attention_mask=mask)
    np.testing.assert_allclose(outputs["cudnn"], outputs["xla"], atol=1e-5)
    with pytest.raises(ValueError, match="unknown attention 'flash'; choose one of"):
        models.create("gpt2-tiny", attention="flash")


@pytest.mark.parametrize("causal", [False, True])
def test_blocked_cpu_attention_equals_one_pass(causal):
    """A batch whose logits outgrow the cache runs in blocks of rows (models.layers.attention):
    the same outputs and gradients as jax.nn.dot_product_attention, padding masked."""
    from models.layers import CPU_ATTENTION_BLOCK_BYTES, attention

    batch, length, heads, dim = 32, 128, 12, 16
    assert batch * heads * length * length * 4 > 4 * CPU_ATTENTION_BLOCK_BYTES  # the blocked path is taken
    q, k, v = (jax.random.normal(key, (batch, length, heads, dim)) for key in jax.random.split(jax.random.key(0), 3))
    keep = np.random.default_rng(0).random((batch, length)) > 0.3
    keep[:, 0] = True
    mask = jnp.asarray(keep)[:, None, None, :]

    def loss(f, q, k, v):
        return (f(q, k, v) ** 2).sum()

    ours = lambda q, k, v: attention(q, k, v, mask, causal=causal, implementation=None)  # noqa: E731
    one_pass = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)  # noqa: E731
    np.testing.assert_allclose(jax.jit(ours)(q, k, v), jax.jit(one_pass)(q, k, v), atol=1e-5)
    for a, b in zip(jax.grad(loss, argnums=(1, 2, 3))(ours, q, k, v), jax.grad(loss, argnums=(1, 2, 3))(one_pass, q, k, v)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    assert "while" in jax.jit(ours).lower(q, k, v).as_text()  # lax.map: the blocks
