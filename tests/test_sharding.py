"""train.sharding: meshes, the rules' placements and the errors for meshes that do not fit, on
shapes alone (one CPU device here; 8-device meshes in test_scale.py)."""

import jax
import pytest
from conftest import config_file, jaxlm, lowerings, tiny_config

import models
from train import sharding
from train.config import TrainConfig
from train.loop import train
from train.step import boxed_param_shapes


def test_default_mesh_is_data_parallel_over_every_device():
    mesh = sharding.make_mesh()
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "model": 1}
    assert sharding.mesh_shape({"fsdp": -1, "model": 2}, 8) == {"data": 1, "fsdp": 4, "model": 2}


@pytest.mark.parametrize("shape, message", [
    ({"data": 1, "pipeline": 1}, r"unknown axes \['pipeline'\]; the axes are data, fsdp, model"),
    ({"data": -1, "model": -1}, "at most one axis may be -1"),
    ({"data": 0}, "sizes must be positive integers or -1"),
    ({"data": 2, "model": 1}, "mesh .* has 2 devices but 1 are available"),
])
def test_bad_mesh_shapes_are_refused(shape, message):
    with pytest.raises(ValueError, match=message):
        sharding.make_mesh(shape)


def test_a_config_with_an_unknown_mesh_axis_is_refused_when_built():
    with pytest.raises(ValueError, match=r"unknown config field 'mesh.tensor'; mesh has data, fsdp, model"):
        TrainConfig().replace({"mesh.tensor": 2})
    with pytest.raises(ValueError, match=r"unknown axes \['tensor'\]"):
        sharding.check_mesh_axes({"data": 2, "tensor": 2})


def test_two_axes_of_all_remaining_devices_are_refused_in_one_line_naming_the_fix(corpus, tmp_path, capsys):
    """mesh.data is -1 by default: --set mesh.fsdp=-1 alone makes two such axes; with mesh.data=1 it
    means fsdp over every device."""
    config = config_file(tmp_path / "cfg.py", tiny_config(corpus, tmp_path / "run"))
    with pytest.raises(SystemExit) as e:
        jaxlm("train", "--config", config, "--set", "mesh.fsdp=-1", "--print-config")
    assert e.value.code == 2
    assert capsys.readouterr().err == ("error: mesh axes data and fsdp are both -1 (all remaining devices); give all "
                                       "but one a size, e.g. --set mesh.data=1\n")
    for order in (["mesh.data=1", "mesh.fsdp=-1"], ["mesh.fsdp=-1", "mesh.data=1"]):
        printed = jaxlm("train", "--config", config, *(f for change in order for f in ("--set", change)),
                        "--print-config")
        assert printed["mesh"] == {"data": 1, "fsdp": -1, "model": 1}
    assert sharding.mesh_shape({"data": 1, "fsdp": -1, "model": 1}, 8) == {"data": 1, "fsdp": 8, "model": 1}
    assert not (tmp_path / "run").exists()


def _specs(module, sizes):
    """Per-device shapes of every parameter under the rules, by path."""
    boxed = boxed_param_shapes(module)
    leaves = jax.tree_util.tree_leaves_with_path(boxed, is_leaf=lambda x: hasattr(x, "names"))
    return {"/".join(k.key for k in path): sharding.shard_shape(leaf.value.shape, leaf.names, sizes)
            for path, leaf in leaves}


def test_rules_shard_weights_over_fsdp_and_model_and_activations_over_the_batch():
    """What the rules say for each kind of parameter, written out by hand."""
    spec = lambda names: tuple(sharding.mesh_axes(names))  # noqa: E731
    assert spec(("embed", "mlp")) == (("fsdp",), ("model",))
    assert spec(("mlp", "embed")) == (("model",), ("fsdp",))
    assert spec(("vocab", "embed")) == (("model",), ("fsdp",))
    assert spec(("embed", "heads", "kv")) == (("fsdp",), ("model",), ())
    assert spec(("heads", "kv", "embed")) == (("model",), (), ("fsdp",))
    assert spec(("positions", "embed")) == ((), ("fsdp",))
    assert spec(("layers", "embed", "mlp")) == ((), ("fsdp",), ("model",))
    # Activations: the batch takes data x fsdp, so their embed axis stays whole.
    assert spec(("batch", "length", "embed")) == (("data", "fsdp"), (), ())
    assert spec(("batch", "length", "mlp")) == (("data", "fsdp"), (), ("model",))
    module, _ = models.create("gpt2-tiny")
    shapes = _specs(module, {"data": 2, "fsdp": 2, "model": 2})
    assert shapes["blocks_0/mlp/fc/kernel"] == (16, 64)  # [32, 128]
    assert shapes["blocks_0/attn/query/kernel"] == (16, 2, 8)  # [32, 4 heads, 8]
    assert shapes["wte/embedding"] == (128, 16)  # [256, 32]
    assert shapes["ln_f/scale"] == (16,)


def test_meshes_that_do_not_divide_the_model_or_the_batch_are_named():
    module, _ = models.create("gpt2-tiny")  # 4 heads, MLP 128, width 32, vocabulary 256
    boxed = boxed_param_shapes(module)
    with pytest.raises(ValueError, match=r"heads axis of size 4 .* cannot be split 3 ways \(model=3\): choose a "
                                         r"tensor-parallel size \(mesh.model\) that divides the number of attention heads"):
        sharding.check_divisible(boxed, {"data": 1, "fsdp": 1, "model": 3})
    with pytest.raises(ValueError, match=r"mlp axis of size 128 .* that divides the MLP width"):
        sharding.check_divisible(boxed, {"data": 1, "fsdp": 1, "model": 3})
    with pytest.raises(ValueError, match=r"vocab axis of size 256 .* pad it \(--set model.vocab_size=258\)"):
        sharding.check_divisible(boxed, {"data": 1, "fsdp": 1, "model": 3})
    with pytest.raises(ValueError, match=r"embed axis of size 32 .* \(fsdp=3\): choose an fsdp size"):
        sharding.check_divisible(boxed, {"data": 1, "fsdp": 3, "model": 1})
    sharding.check_divisible(boxed, {"data": 3, "fsdp": 2, "model": 4})
    with pytest.raises(ValueError, match=r"data.batch_size=12 \(/ data.grad_accum=2\) does not split over the 4 "
                                         r"data-parallel devices \(mesh data=2 x fsdp=2\); make data.batch_size / "
                                         r"data.grad_accum a multiple of 4"):
        sharding.check_batch(12, 2, {"data": 2, "fsdp": 2, "model": 2})
    sharding.check_batch(16, 2, {"data": 2, "fsdp": 2, "model": 2})


def test_a_mesh_for_other_devices_stops_training_before_reading_data_compiling_or_touching_the_run_dir(
        corpus, tmp_path, monkeypatch):
    """The mesh is checked against the devices before the corpus is tokenised (into the token cache)."""
    monkeypatch.setenv("JAXLM_CACHE", str(tmp_path / "cache"))
    with lowerings() as lowered, pytest.raises(ValueError, match="has 4 devices but 1 are available"):
        train(tiny_config(corpus, tmp_path / "run", **{"mesh.data": 2, "mesh.model": 2}))
    assert not lowered and not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
