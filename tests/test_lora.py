"""LoRA (models.lora, qwix's LoraProvider): merged parameters compute the adapted function on every
family; runs train only the adapters (and a classifier's head) with the base bit-identical and
the optimizer state holding the trained parts alone; exact resumption; the merged checkpoint
evaluates, generates and exports; refused with the depth-wise methods."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from test_finetune import NO_EVAL, classify_config
from test_train import _assert_bitwise_equal

import models
from models import lora
from train.checkpoint import load_for_eval, load_variables
from train.loop import train

LORA = {"model.lora_rank": 4, "model.lora_alpha": 8.0}


@pytest.mark.parametrize("family", ["gpt2-tiny", "bert-tiny", "albert-tiny"])
def test_merged_parameters_compute_the_adapted_function(family):
    module, config = models.create(family, lora_rank=4, lora_alpha=8.0, lora_targets="all")
    params = models.init_params(module, jax.random.key(0))
    # B starts at zero (the base function); move it so the adapters change the function
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.05 if path[-1].key == "kernel_lora_b" else x, params)
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 200, (2, 12)))
    first = lambda out: out if not isinstance(out, dict) else next(iter(out.values()))  # noqa: E731
    adapted = first(module.apply({"params": params}, ids))
    merged_config = lora.merged_config(config)
    merged = first(merged_config.module().apply({"params": lora.merge(params, config)}, ids))
    np.testing.assert_allclose(merged, adapted, atol=1e-5)
    base = jax.tree_util.tree_map_with_path(lambda path, x: 0 * x if path[-1].key == "kernel_lora_b" else x, params)
    assert not np.allclose(first(module.apply({"params": base}, ids)), adapted, atol=1e-3)
    assert merged_config.lora_rank == 0 and "kernel_lora_a" not in str(jax.tree_util.tree_structure(lora.merge(params, config)))


def _paths(tree):
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def base_run(corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("base") / "base"
    train(tiny_config(corpus, run, steps=4, **NO_EVAL))
    return run


@pytest.mark.slow
def test_lm_run_trains_only_the_adapters_and_resumes_exactly(corpus, base_run, tmp_path):
    """From a pretrained run, with STLR: the base bit-identical, the adapters moved, the optimizer
    state as large as the adapters; stopped and resumed, bitwise the uninterrupted run; merged,
    it evaluates and generates as a plain model."""
    changes = {**LORA, "init_from": str(base_run), "optimizer.schedule": "stlr", "optimizer.warmup_steps": 0, **NO_EVAL}
    summary = train(tiny_config(corpus, tmp_path / "full", steps=12, **changes))
    base = _paths(load_variables(base_run)[2]["params"])
    _, _, variables, _ = load_variables(tmp_path / "full")
    trained = _paths(variables["params"])
    adapters = {k for k in trained if "kernel_lora" in k}
    assert adapters and set(trained) - adapters == set(base)
    for key in base:
        assert np.array_equal(trained[key], base[key]), key  # frozen: bit-identical
    assert any(np.abs(np.asarray(trained[k])).sum() > 0 for k in adapters if k.endswith("kernel_lora_b']"))
    assert summary["trainable_params"] == sum(int(trained[k].size) for k in adapters) < summary["params"] / 4

    parts = tmp_path / "parts"
    steady = {**changes, "optimizer.schedule": "constant"}
    train(tiny_config(corpus, parts, steps=4, **steady))
    train(tiny_config(corpus, tmp_path / "straight", steps=8, **steady))
    resumed = train(tiny_config(corpus, parts, steps=8, **steady))
    assert resumed["start_step"] == 4
    _assert_bitwise_equal(load_variables(parts)[2], load_variables(tmp_path / "straight")[2])

    module, config, params, _ = load_for_eval(tmp_path / "full")
    assert config.lora_rank == 0 and not any("kernel_lora" in k for k in _paths(params))
    from train.evaluation import generate_from_checkpoint

    assert generate_from_checkpoint(tmp_path / "full", "the", max_new_tokens=3, temperature=0)["new_tokens"] >= 0


def test_optimizer_state_holds_the_adapters_alone():
    from optim.config import OptimizerConfig
    from train.config import DataConfig, TrainConfig
    from train.finetuning import make_optimizer

    config = TrainConfig(model=models.get_config("gpt2-tiny", lora_rank=2), optimizer=OptimizerConfig(),
                         data=DataConfig(seq_len=32))
    tx, _ = make_optimizer(config, config.model)
    module = config.model.module()
    params = models.init_params(module, jax.random.key(0))
    state_size = sum(int(x.size) for x in jax.tree.leaves(tx.init(params)) if hasattr(x, "size") and x.ndim)
    assert state_size == 2 * lora.count(params)  # AdamW's two moments, of the adapters only


def test_lora_refuses_the_depth_wise_methods(corpus, labelled_data, tmp_path):
    config = classify_config(corpus, labelled_data, tmp_path / "run", model="bert-tiny", **LORA)
    with pytest.raises(ValueError, match="LoRA trains only its adapters"):
        train(config)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["bert-tiny", "albert-tiny"])
def test_encoder_classifier_trains_its_head_and_adapters(corpus, labelled_data, tmp_path, model):
    """classify on an encoder body with LoRA and STLR: the head and the adapters move, the body
    stays; the merged checkpoint is a plain classifier."""
    config = classify_config(corpus, labelled_data, tmp_path / "run", model=model, **LORA,
                             **{"optimizer.discriminative_factor": 1.0, "optimizer.unfreeze_every": 0,
                                "task.classifier": {"pooling": "mean", "head": "linear"}})
    summary = train(config)
    first = _paths(load_variables(tmp_path / "run", step=4)[2]["params"])
    trained = _paths(load_variables(tmp_path / "run")[2]["params"])
    moved = {k for k in trained if "kernel_lora" in k or k.startswith("['head']")}
    assert summary["trainable_params"] == sum(int(trained[k].size) for k in moved)
    assert all(np.array_equal(trained[k], first[k]) for k in set(trained) - moved)  # the body never moves
    assert any(not np.array_equal(trained[k], first[k]) for k in moved)
    module, merged, params, _ = load_for_eval(tmp_path / "run")
    assert merged.body.lora_rank == 0 and "validation" in summary


@pytest.mark.slow
def test_hugging_face_export_of_a_lora_run_loads_in_transformers(corpus, base_run, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from train.export import to_hf

    train(tiny_config(corpus, tmp_path / "run", steps=4, **LORA, init_from=str(base_run), **NO_EVAL))
    module, config, params, _ = load_for_eval(tmp_path / "run")
    to_hf(tmp_path / "run", tmp_path / "hf")
    folder = tmp_path / "hf"
    ids = np.random.RandomState(0).randint(0, config.vocab_size, (1, 10))
    ours = np.asarray(module.apply({"params": params}, jnp.asarray(ids)))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()(torch.tensor(ids)).logits
    np.testing.assert_allclose(theirs.detach().numpy(), ours, atol=1e-4)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "gpt2"
