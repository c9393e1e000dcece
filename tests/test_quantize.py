"""bf16 and int8 inference variants (``models.quantize``): what the trees hold, their bytes, and how
close their outputs stay to fp32."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models import quantize
from models.generation import init_cache, left_pad
from models.layers import is_quantized
from train.checkpoint import save_params


@functools.lru_cache
def _model(name, scan_layers=False):
    module, config = models.create(name, scan_layers=scan_layers)
    return module, models.init_params(module, jax.random.key(0))


def _leaves(tree):
    """{path: leaf} with qwix's QArrays as (qvalue, scale) leaves."""
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _ids(vocab, shape=(2, 12)):
    return np.random.RandomState(0).randint(0, vocab, shape)


@pytest.mark.parametrize("name", ["gpt2", "bert-base-uncased"])
def test_parameter_bytes_of_the_variants(name):
    """From shapes alone (nothing allocated): bf16 halves the bytes, int8 keeps at most 0.27 of them."""
    module, _ = models.create(name)
    shapes = models.param_shapes(module)
    bf16 = jax.eval_shape(lambda p: quantize.cast(module, p, "bfloat16")[1], shapes)
    int8 = jax.eval_shape(lambda p: quantize.int8(module, p)[1], shapes)
    fp32 = quantize.param_bytes(shapes)
    assert quantize.param_bytes(bf16) == fp32 / 2
    assert quantize.param_bytes(int8) / fp32 <= 0.27
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(bf16))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_every_kernel_and_table_is_int8_with_a_scale_per_output_channel(scan_layers):
    module, params = _model("gpt2-tiny", scan_layers)
    _, qparams = quantize.int8(module, params)
    leaves = _leaves(qparams)
    values = {k: v for k, v in leaves.items() if k.endswith(".qvalue")}
    floats = {k: v for k, v in leaves.items() if not k.endswith((".qvalue", ".scale"))}
    assert len(values) == 6 * (1 if scan_layers else 2) + 2  # q, k, v, out, fc, proj (per layer); wte, wpe
    assert all(v.dtype == jnp.int8 for v in values.values())
    assert all(k.endswith(("['bias']", "['scale']")) and v.dtype == jnp.float32 for k, v in floats.items())
    stack = (2,) if scan_layers else ()
    blocks = "['blocks']" if scan_layers else "['blocks_0']"
    scale = lambda path: leaves[f"{blocks}{path}.array.scale"].shape  # noqa: E731
    assert scale("['attn']['query']['kernel']") == (*stack, 1, 4, 8)  # [embed | heads, kv]: per head and kv
    assert scale("['attn']['out']['kernel']") == (*stack, 1, 1, 32)  # [heads, kv | embed]
    assert scale("['mlp']['fc']['kernel']") == (*stack, 1, 128)
    assert leaves["['wte']['embedding'].scale"].shape == (256, 1)  # per row: per output channel when tied


def test_scanned_layers_are_quantized_one_by_one():
    """A stacked kernel gets each layer's own scales: the scanned int8 model equals the unrolled one."""
    scanned, params = _model("gpt2-tiny", True)
    unrolled, _ = models.create("gpt2-tiny")
    per_layer = {k: v for k, v in params.items() if k != "blocks"}
    per_layer.update({f"blocks_{i}": jax.tree.map(lambda x: x[i], params["blocks"]) for i in range(2)})
    ids = _ids(256)
    outs = [jax.jit(m.apply)({"params": p}, ids) for m, p in
            (quantize.int8(scanned, params), quantize.int8(unrolled, per_layer))]
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2-tiny", "bert-tiny", pytest.param("albert-tiny", marks=pytest.mark.slow)])
def test_variants_stay_close_to_fp32(name):
    module, params = _model(name)
    ids = _ids(module.config.vocab_size)
    hidden = lambda out: out["hidden"] if isinstance(out, dict) else out  # noqa: E731
    reference = hidden(jax.jit(module.apply)({"params": params}, ids))
    for variant in ({"dtype": "bfloat16"}, {"quantize": "int8"}, {"dtype": "bfloat16", "quantize": "int8"}):
        m, p = quantize.prepare(module, params, **variant)
        out = hidden(jax.jit(m.apply)({"params": p}, ids))
        assert out.dtype == (jnp.float32 if name.startswith("gpt") else jnp.dtype(m.config.dtype))
        scale = float(jnp.abs(reference).max())
        assert float(jnp.abs(out.astype(jnp.float32) - reference).max()) < 0.05 * scale, variant


def test_int8_decoding_uses_the_cache_like_recomputation():
    module, params = _model("gpt2-tiny")
    qmodule, qparams = quantize.int8(module, params)
    prompts = [[5, 17, 3, 9], [8]]
    ids, mask = left_pad(prompts, 4)
    logits, _ = jax.jit(lambda p, c: qmodule.apply({"params": p, "cache": c}, ids, attention_mask=mask, decode=True,
                                                   mutable=["cache"]))(qparams, init_cache(qmodule, 2, 4))
    for row, prompt in enumerate(prompts):
        full = qmodule.apply({"params": qparams}, np.asarray([prompt]))[0, -1]
        np.testing.assert_allclose(logits[row, -1], full, atol=1e-4)


def test_quantizing_twice_or_casting_after_is_refused():
    module, params = _model("gpt2-tiny")
    qmodule, qparams = quantize.int8(module, params)
    with pytest.raises(ValueError, match="already int8: quantize the float parameters, once"):
        quantize.int8(qmodule, qparams)
    with pytest.raises(ValueError, match="already int8"):
        quantize.int8(module, qparams)
    with pytest.raises(ValueError, match="before quantizing"):
        quantize.cast(qmodule, qparams, "bfloat16")
    with pytest.raises(ValueError, match="quantize='int4'"):
        quantize.prepare(module, params, quantize="int4")
    classifier = models.ClassifierConfig(module.config, ("a", "b")).module()
    with pytest.raises(ValueError, match="not to a ClassifierConfig"):
        quantize.prepare(classifier, {}, dtype="bfloat16")
    assert quantize.is_int8(qmodule, qparams) and not quantize.is_int8(module, params)
    assert any(is_quantized(x) for x in jax.tree.leaves(qparams, is_leaf=is_quantized))


def test_tables_quantized_by_row_serve_lookup_and_tied_logits():
    module, params = _model("gpt2-tiny")
    _, qparams = quantize.int8(module, params)
    table, q = params["wte"]["embedding"], qparams["wte"]["embedding"]
    np.testing.assert_allclose(q.qvalue * q.scale, table, atol=float(jnp.abs(table).max()) / 127)
    flat = flax.traverse_util.flatten_dict(qparams)
    assert ("wte", "embedding") in flat and ("wpe", "embedding") in flat


def test_int8_parameters_are_not_saved(tmp_path):
    """A run folder records the float model: int8 parameters saved in it would not load. Nothing is written."""
    module, params = _model("gpt2-tiny")
    qmodule, qparams = quantize.prepare(module, params, quantize="int8")
    with pytest.raises(ValueError, match=r"int8 weights are made at load time \(jaxlm evaluate or jaxlm generate "
                                         r"--quantize int8\), not saved") as e:
        save_params(tmp_path / "run", qmodule.config, qparams)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()
