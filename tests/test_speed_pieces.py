"""The pieces that make the train step fast must compute what they replace."""

import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim
from models import layers
from train import malloc

ROOT = Path(__file__).resolve().parents[1]


def _plain_layer_norm(x, scale, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def test_layer_norm_backward_equals_autodiff():
    kx, ks, kb, kc = jax.random.split(jax.random.key(0), 4)
    x = 3.0 + 2.0 * jax.random.normal(kx, (3, 5, 24))
    scale, bias = jax.random.normal(ks, (24,)), jax.random.normal(kb, (24,))
    cotangent = jax.random.normal(kc, x.shape)

    def loss(f):
        return lambda *args: jnp.sum(f(*args, 1e-5) * cotangent)

    ours = jax.grad(loss(layers.layer_norm), argnums=(0, 1, 2))(x, scale, bias)
    reference = jax.grad(loss(_plain_layer_norm), argnums=(0, 1, 2))(x, scale, bias)
    np.testing.assert_allclose(layers.layer_norm(x, scale, bias, 1e-5), _plain_layer_norm(x, scale, bias, 1e-5),
                               atol=1e-6)
    for a, b in zip(ours, reference):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clipping_matches_optax(max_norm):
    grads = {"w": jnp.arange(12.0).reshape(3, 4) - 5, "b": jnp.ones(4)}
    ours, _ = optim.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    reference, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    for key in grads:
        np.testing.assert_allclose(ours[key], reference[key], rtol=1e-6)
    assert float(optax.tree.norm(ours)) == pytest.approx(min(max_norm, float(optax.tree.norm(grads))), rel=1e-6)


def test_dense_with_several_contracted_axes_equals_dot_general():
    x = jax.random.normal(jax.random.key(1), (2, 3, 4, 5))
    dense = layers.dense(6, contract=2, axes=("heads", "kv", "embed"), std=0.5, name="out",
                         dtype=jnp.float32, param_dtype=jnp.float32)
    params = dense.init(jax.random.key(2), x)["params"]
    kernel = params["kernel"].value if hasattr(params["kernel"], "value") else params["kernel"]
    assert kernel.shape == (4, 5, 6)
    expected = jnp.einsum("bthd,hdo->bto", x, kernel)
    np.testing.assert_allclose(dense.apply({"params": params}, x), expected, atol=1e-5)


PAGE_FAULTS = textwrap.dedent("""
    import resource, sys
    sys.path.insert(0, sys.argv[1])
    from train.malloc import retain_freed_memory
    print(retain_freed_memory())
    def faults(n=256 * 2**20):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = bytearray(n)  # zero-filled: every page is touched
        del block
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    faults()
    print(faults())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
@pytest.mark.parametrize("setting", ["retained", "default"])
def test_retained_memory_is_reused_without_page_faults(setting):
    """A second 256 MB block reuses the first one's pages instead of faulting 65,536 fresh ones."""
    env = {"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", "JAXLM_MALLOC": setting}
    out = subprocess.run([sys.executable, "-c", PAGE_FAULTS, str(ROOT)], env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    if setting == "retained":
        assert out[0] == "retained" and int(out[1]) < 1000, out
    else:
        assert out[0].startswith("default") and int(out[1]) > 30000, out


def test_malloc_stays_default_on_accelerators(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")
    assert not malloc.jax_runs_on_cpu()
    assert malloc.retain_freed_memory() == "default (JAX runs on an accelerator)"
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert malloc.jax_runs_on_cpu()
